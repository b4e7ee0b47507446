//! The stand-in against the real kube client: what the backend's tests rely
//! on it for.

use std::time::Duration;

use ephem_kube_stand_in::{Condition, NamespaceDeletion, StandIn, USER};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{
    DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

async fn client(api: &StandIn) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&api.kubeconfig("stand-in")).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn namespace(name: &str, labels: serde_json::Value) -> Namespace {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(status) => *status,
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn namespaces_round_trip_with_server_set_fields() {
    let api = StandIn::start().await.unwrap();
    let client = client(&api).await;
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );

    let namespaces: Api<Namespace> = Api::all(client);
    let created = namespaces
        .create(
            &PostParams::default(),
            &namespace("a", json!({"team": "x"})),
        )
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(
        meta.uid.is_some() && meta.resource_version.is_some() && meta.creation_timestamp.is_some()
    );
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    namespaces
        .create(
            &PostParams::default(),
            &namespace("b", json!({"team": "y"})),
        )
        .await
        .unwrap();
    namespaces
        .create(&PostParams::default(), &namespace("c", json!({})))
        .await
        .unwrap();

    let again = namespaces
        .create(&PostParams::default(), &namespace("a", json!({})))
        .await
        .unwrap_err();
    let status = api_error(again);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );

    let names = |list: kube::core::ObjectList<Namespace>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|n| n.metadata.name.unwrap())
            .collect()
    };
    let team_x = namespaces
        .list(&ListParams::default().labels("team=x"))
        .await
        .unwrap();
    assert!(team_x.metadata.resource_version.is_some());
    assert_eq!(names(team_x), ["a"]);
    let any_team = namespaces
        .list(&ListParams::default().labels("team"))
        .await
        .unwrap();
    assert_eq!(names(any_team), ["a", "b"]);
    let by_name = namespaces
        .list(&ListParams::default().fields("metadata.name=c"))
        .await
        .unwrap();
    assert_eq!(names(by_name), ["c"]);
    let page = namespaces
        .list(&ListParams::default().limit(2))
        .await
        .unwrap();
    let token = page.metadata.continue_.clone().expect("a continue token");
    assert_eq!(names(page), ["a", "b"]);
    let rest = namespaces
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(rest), ["c"]);

    let patched = namespaces
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"janitor/ttl": "30m"}, "labels": {"team": null}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.annotations.unwrap()["janitor/ttl"], "30m");
    assert!(!patched
        .metadata
        .labels
        .unwrap_or_default()
        .contains_key("team"));

    let invalid = namespaces
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"host": "a:b"}}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(invalid).code, 422);
}

#[tokio::test]
async fn deletion_honours_the_uid_precondition_and_terminates() {
    let api = StandIn::start().await.unwrap();
    api.set_deletion(NamespaceDeletion::After(Duration::from_millis(300)));
    let namespaces: Api<Namespace> = Api::all(client(&api).await);
    let created = namespaces
        .create(&PostParams::default(), &namespace("a", json!({})))
        .await
        .unwrap();
    let mut dp = DeleteParams::background();
    dp.preconditions = Some(Preconditions {
        uid: Some("not-the-uid".to_owned()),
        resource_version: None,
    });
    let status = api_error(namespaces.delete("a", &dp).await.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(
        status
            .message
            .contains("Precondition failed: UID in precondition"),
        "{}",
        status.message
    );

    dp.preconditions = Some(Preconditions {
        uid: created.metadata.uid.clone(),
        resource_version: None,
    });
    let secrets: Api<Secret> = Api::namespaced(namespaces.clone().into_client(), "a");
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let terminating = namespaces
        .delete("a", &dp)
        .await
        .unwrap()
        .left()
        .expect("the namespace");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    let body = api.requests().last().unwrap().json().unwrap();
    assert_eq!(body["propagationPolicy"], "Background");

    let twice = api_error(
        namespaces
            .delete("a", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert!(
        twice.message.contains("ensuring all content is removed"),
        "{}",
        twice.message
    );
    let late: Secret = serde_json::from_value(json!({"metadata": {"name": "late"}})).unwrap();
    let refused = api_error(
        secrets
            .create(&PostParams::default(), &late)
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.code, 403);
    assert!(
        refused.message.contains("because it is being terminated"),
        "{}",
        refused.message
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let gone = api_error(namespaces.get("a").await.unwrap_err());
    assert_eq!((gone.code, gone.reason.as_str()), (404, "NotFound"));
    assert!(
        api.objects("a", "secrets").is_empty(),
        "its objects went with it"
    );
}

#[tokio::test]
async fn a_stuck_namespace_keeps_its_conditions() {
    let api = StandIn::start().await.unwrap();
    api.set_deletion(NamespaceDeletion::Stuck(vec![Condition::new(
        "NamespaceFinalizersRemaining",
        "SomeFinalizersRemain",
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances",
    )]));
    let namespaces: Api<Namespace> = Api::all(client(&api).await);
    namespaces
        .create(&PostParams::default(), &namespace("a", json!({})))
        .await
        .unwrap();
    namespaces
        .delete("a", &DeleteParams::background())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stuck = namespaces.get("a").await.unwrap();
    let conditions = stuck.status.unwrap().conditions.unwrap();
    assert_eq!(conditions[0].type_, "NamespaceFinalizersRemaining");
    assert!(conditions[0]
        .message
        .as_deref()
        .unwrap()
        .contains("example.com/hold"));
}

#[tokio::test]
async fn credentials_and_rbac_fail_like_a_cluster() {
    let api = StandIn::start().await.unwrap();
    let client = client(&api).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    api.forbid("create", "namespaces");
    let denied = api_error(
        namespaces
            .create(&PostParams::default(), &namespace("a", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((denied.code, denied.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        denied.message,
        format!("namespaces is forbidden: User \"{USER}\" cannot create resource \"namespaces\" in API group \"\" at the cluster scope")
    );
    api.allow_all();
    namespaces
        .create(&PostParams::default(), &namespace("a", json!({})))
        .await
        .unwrap();

    api.set_token("rotated");
    let rejected = api_error(namespaces.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(
        (rejected.code, rejected.reason.as_str()),
        (401, "Unauthorized")
    );
}

#[tokio::test]
async fn pods_are_watched_to_readiness_and_their_logs_followed() {
    let api = StandIn::start().await.unwrap();
    let client = client(&api).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &namespace("ns", json!({})))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "ns");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"containers": [{"name": "db", "image": "postgres:15"}]},
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));

    let ready = |pod: Option<&Pod>| {
        pod.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let waiting = tokio::spawn(kube::runtime::wait::await_condition(
        pods.clone(),
        "db",
        ready,
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    api.set_pod_status(
        "ns",
        "db",
        json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
    );
    let seen = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("readiness seen within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        seen.unwrap().status.unwrap().phase.as_deref(),
        Some("Running")
    );
    let watched = api
        .requests()
        .iter()
        .any(|r| r.param("watch").as_deref() == Some("true"));
    assert!(watched, "await_condition watched");

    api.append_pod_log("ns", "db", "starting\n");
    let params = LogParams {
        follow: true,
        ..LogParams::default()
    };
    let mut lines = pods.log_stream("db", &params).await.unwrap().lines();
    assert_eq!(lines.try_next().await.unwrap().as_deref(), Some("starting"));
    api.append_pod_log("ns", "db", "ready to accept connections\n");
    assert_eq!(
        lines.try_next().await.unwrap().as_deref(),
        Some("ready to accept connections")
    );
    api.set_pod_status("ns", "db", json!({"phase": "Failed"}));
    assert_eq!(
        lines.next().await.transpose().unwrap(),
        None,
        "the log ends with the pod"
    );
    let tail = pods
        .logs(
            "db",
            &LogParams {
                tail_lines: Some(1),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail, "ready to accept connections\n");
}

#[test]
fn the_blocking_stand_in_serves_without_a_runtime_of_the_callers() {
    let api = StandIn::start_blocking().unwrap();
    api.insert_namespace(
        json!({"metadata": {"name": "planted", "creationTimestamp": "2020-01-01T00:00:00Z"}}),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let created = runtime.block_on(async {
        let namespaces: Api<Namespace> = Api::all(client(&api).await);
        namespaces
            .get("planted")
            .await
            .unwrap()
            .metadata
            .creation_timestamp
    });
    assert_eq!(created.unwrap().0.to_string(), "2020-01-01T00:00:00Z");
    let url = api.url();
    drop(api);
    let after = std::net::TcpStream::connect(url.trim_start_matches("http://"));
    assert!(after.is_err(), "the port is closed once dropped");
}

/// A Role in one namespace and a ClusterRole bound everywhere, as
/// `kubectl apply` would take them.
const RBAC: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: ns-only}
rules:
  - apiGroups: [""]
    resources: [namespaces]
    verbs: [create, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ns-only}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ns-only}
subjects: [{kind: ServiceAccount, name: cargo-ephem, namespace: ephem-ci}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: read-secrets, namespace: ephem-ci}
rules:
  - apiGroups: [""]
    resources: [secrets]
    verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: read-secrets, namespace: ephem-ci}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-secrets}
subjects: [{kind: ServiceAccount, name: cargo-ephem, namespace: ephem-ci}]
"#;

#[tokio::test]
async fn applied_rbac_grants_what_its_bindings_say_where_they_say_it() {
    let api = StandIn::start().await.unwrap();
    api.apply_rbac(RBAC).unwrap();
    let client = client(&api).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &namespace("ephem-ci", json!({})))
        .await
        .unwrap();
    namespaces.list(&ListParams::default()).await.unwrap();
    let refused = api_error(
        namespaces
            .delete("ephem-ci", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.code, 403);
    assert_eq!(
        refused.message,
        format!("namespaces \"ephem-ci\" is forbidden: User \"{USER}\" cannot delete resource \"namespaces\" in API group \"\" in the namespace \"ephem-ci\"")
    );

    api.insert_object(
        "ephem-ci",
        "secrets",
        json!({"metadata": {"name": "regcred"}}),
    );
    api.insert_object(
        "kube-system",
        "secrets",
        json!({"metadata": {"name": "admin"}}),
    );
    let here: Api<Secret> = Api::namespaced(client.clone(), "ephem-ci");
    here.get("regcred").await.unwrap();
    let elsewhere: Api<Secret> = Api::namespaced(client, "kube-system");
    assert_eq!(
        api_error(elsewhere.get("admin").await.unwrap_err()).code,
        403
    );

    let decisions: Vec<(String, String, Option<String>, bool)> = api
        .accesses()
        .into_iter()
        .map(|(a, granted)| (a.verb, a.resource, a.namespace, granted))
        .collect();
    let ns = |s: &str| Some(s.to_owned());
    assert_eq!(
        decisions,
        [
            ("create".into(), "namespaces".into(), None, true),
            ("list".into(), "namespaces".into(), None, true),
            ("delete".into(), "namespaces".into(), ns("ephem-ci"), false),
            ("get".into(), "secrets".into(), ns("ephem-ci"), true),
            ("get".into(), "secrets".into(), ns("kube-system"), false),
        ]
    );
}
