//! The stand-in as a production-like cluster answers, against the real kube
//! client: admission's refusals (Pod Security, a webhook, LimitRanger, a
//! namespace's missing `default` ServiceAccount) as 403 `Forbidden` Statuses
//! in kube-apiserver's words; pods Unschedulable for a while or pulled after
//! a throttled try; `runAsNonRoot` with a root image; watches that end with
//! 410 after a short history and send BOOKMARKs.

use std::time::Duration;

use ephem_kube_stand_in::{Fate, Lifecycle, PodSecurityLevel, StandIn, Webhook};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, ServiceAccount};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use serde_json::{json, Value};

async fn client(api: &StandIn) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&api.kubeconfig("stand-in")).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

async fn namespace(client: &Client, name: &str, labels: Value) -> Result<Namespace, kube::Error> {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
}

fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn bare(name: &str) -> Pod {
    pod(
        name,
        json!({"containers": [{"name": name, "image": "app:1"}]}),
    )
}

fn status(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("not an API error: {other}"),
    }
}

#[tokio::test]
async fn pod_security_refuses_by_the_namespace_label_else_the_clusters_default() {
    let api = StandIn::start().await.unwrap();
    let client = client(&api).await;
    namespace(
        &client,
        "strict",
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "strict");
    let refused = status(
        pods.create(&PostParams::default(), &bare("db"))
            .await
            .unwrap_err(),
    );
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        refused.message,
        "pods \"db\" is forbidden: violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"db\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"db\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"db\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"db\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
    );
    let hardened = pod(
        "db",
        json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 999, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "db", "image": "app:1", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
        }),
    );
    pods.create(&PostParams::default(), &hardened)
        .await
        .unwrap();

    // Unlabelled namespaces get the cluster's default; a label overrides it.
    api.set_pod_security_default(PodSecurityLevel::Restricted);
    namespace(&client, "plain", json!({})).await.unwrap();
    let plain: Api<Pod> = Api::namespaced(client.clone(), "plain");
    let refused = status(
        plain
            .create(&PostParams::default(), &bare("x"))
            .await
            .unwrap_err(),
    );
    assert!(
        refused
            .message
            .contains("violates PodSecurity \"restricted:latest\""),
        "{refused:?}"
    );
    namespace(
        &client,
        "lax",
        json!({"pod-security.kubernetes.io/enforce": "baseline"}),
    )
    .await
    .unwrap();
    let lax: Api<Pod> = Api::namespaced(client.clone(), "lax");
    lax.create(&PostParams::default(), &bare("x"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_webhook_denies_in_the_api_servers_words() {
    let api = StandIn::start().await.unwrap();
    api.deny_with_webhook(Webhook::denying(
        "validate.kyverno.svc-fail",
        "pods",
        "\n\nresource Pod/ns/db was blocked due to the following policies\n\nrequire-team-label:\n  check-team: 'validation error: label team is required. rule check-team failed at path /metadata/labels/team/'\n",
    ));
    api.deny_with_webhook(Webhook {
        code: Some(400),
        ..Webhook::denying("namespaces.policy.example", "namespaces", "")
    });
    let client = client(&api).await;
    let refused = status(namespace(&client, "ns", json!({})).await.unwrap_err());
    assert_eq!(refused.code, 400);
    assert_eq!(
        refused.message,
        "namespaces \"ns\" is forbidden: admission webhook \"namespaces.policy.example\" denied the request without explanation"
    );
    api.insert_namespace(json!({"metadata": {"name": "ns"}}));
    let pods: Api<Pod> = Api::namespaced(client, "ns");
    let refused = status(
        pods.create(&PostParams::default(), &bare("db"))
            .await
            .unwrap_err(),
    );
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert!(
        refused.message.starts_with(
            "pods \"db\" is forbidden: admission webhook \"validate.kyverno.svc-fail\" denied the request: \n\nresource Pod/ns/db was blocked"
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_new_namespace_refuses_pods_until_its_service_account_exists() {
    let api = StandIn::start().await.unwrap();
    api.set_service_account_delay(Duration::from_millis(300));
    let client = client(&api).await;
    namespace(&client, "fresh", json!({})).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "fresh");
    let refused = status(
        pods.create(&PostParams::default(), &bare("db"))
            .await
            .unwrap_err(),
    );
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        refused.message,
        "pods \"db\" is forbidden: error looking up service account fresh/default: serviceaccount \"default\" not found"
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "fresh");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while accounts.get_opt("default").await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no default ServiceAccount"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let created = pods
        .create(&PostParams::default(), &bare("db"))
        .await
        .unwrap();
    assert_eq!(
        created.spec.unwrap().service_account_name.as_deref(),
        Some("default")
    );
}

#[tokio::test]
async fn a_limit_range_defaults_containers_and_refuses_what_exceeds_its_maximum() {
    let api = StandIn::start().await.unwrap();
    let client = client(&api).await;
    namespace(&client, "ns", json!({})).await.unwrap();
    // A cluster policy's LimitRange, as the API stores one written with only
    // `max` (its defaulting copies max into default and defaultRequest).
    api.insert_object(
        "ns",
        "limitranges",
        json!({"metadata": {"name": "policy"}, "spec": {"limits": [{"type": "Container",
            "max": {"cpu": "500m"}, "default": {"cpu": "500m"}, "defaultRequest": {"cpu": "500m"}}]}}),
    );
    let pods: Api<Pod> = Api::namespaced(client, "ns");
    let big = pod(
        "db",
        json!({"containers": [{"name": "db", "image": "app:1",
            "resources": {"limits": {"cpu": "1"}}}]}),
    );
    let refused = status(pods.create(&PostParams::default(), &big).await.unwrap_err());
    assert_eq!((refused.code, refused.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        refused.message,
        "pods \"db\" is forbidden: [maximum cpu usage per Container is 500m, but limit is 1., maximum cpu usage per Container is 500m, but request is 1.]"
    );
    let created = pods
        .create(&PostParams::default(), &bare("db"))
        .await
        .unwrap();
    let resources = created.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap();
    assert_eq!(resources.limits.unwrap()["cpu"].0, "500m");
    assert_eq!(resources.requests.unwrap()["cpu"].0, "500m");
    assert_eq!(
        created.metadata.annotations.unwrap()["kubernetes.io/limit-ranger"],
        "LimitRanger plugin set: cpu request for container db; cpu limit for container db"
    );
}

async fn until(pods: &Api<Pod>, name: &str, pred: impl Fn(&Pod) -> bool) -> Pod {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pod = pods.get(name).await.unwrap();
        if pred(&pod) {
            return pod;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn waiting(pod: &Pod) -> Option<(String, String)> {
    let w = pod.status.as_ref()?.container_statuses.as_ref()?[0]
        .state
        .as_ref()?
        .waiting
        .clone()?;
    Some((w.reason.unwrap_or_default(), w.message.unwrap_or_default()))
}

#[tokio::test]
async fn pods_recover_from_unschedulable_and_throttled_pulls_and_root_images_are_refused() {
    let api = StandIn::start().await.unwrap();
    let throttled = "rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/library/busy:1\": 429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit.";
    let missing = "rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/gone:1\": failed to resolve reference \"docker.io/library/gone:1\": docker.io/library/gone:1: not found";
    api.set_lifecycle(
        Lifecycle::new(Duration::from_millis(10), Duration::from_millis(10))
            .rule(
                "big",
                Fate::UnschedulableFor {
                    message: "0/1 nodes are available: 1 Insufficient memory.".into(),
                    duration: Duration::from_millis(300),
                },
            )
            .rule(
                "busy",
                Fate::PullFailsThen {
                    message: throttled.into(),
                    failures: 1,
                    log: vec!["up".into()],
                },
            )
            .rule(
                "gone",
                Fate::PullFails {
                    message: missing.into(),
                },
            )
            .user("postgres", 999),
    );
    let client = client(&api).await;
    namespace(&client, "ns", json!({})).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let post = PostParams::default();
    let plain = |image: &str| {
        let name = image.split(':').next().unwrap();
        pod(
            name,
            json!({"containers": [{"name": name, "image": image}]}),
        )
    };
    for image in ["big:1", "busy:1", "gone:1"] {
        pods.create(&post, &plain(image)).await.unwrap();
    }
    let nonroot = |image: &str| {
        pod(
            image.split(':').next().unwrap(),
            json!({"securityContext": {"runAsNonRoot": true},
                "containers": [{"name": "c", "image": image}]}),
        )
    };
    pods.create(&post, &nonroot("postgres:15")).await.unwrap();
    pods.create(&post, &nonroot("redis:7")).await.unwrap();

    // Unschedulable first, then scheduled and ready.
    until(&pods, "big", ready).await;
    let events: Api<Event> = Api::namespaced(client, "ns");
    let said = |pod: &'static str| {
        let events = events.clone();
        async move {
            let list = events
                .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
                .await
                .unwrap();
            list.items
                .into_iter()
                .filter_map(|e| Some(format!("{} {}", e.reason?, e.message?)))
                .collect::<Vec<_>>()
        }
    };
    let big = said("big").await;
    assert_eq!(
        big[0],
        "FailedScheduling 0/1 nodes are available: 1 Insufficient memory."
    );
    assert!(big.iter().any(|e| e.starts_with("Scheduled ")), "{big:?}");

    // A throttled pull, a back-off, then a pull that succeeds.
    until(&pods, "busy", ready).await;
    let busy = said("busy").await;
    assert!(
        busy.contains(&format!(
            "Failed Failed to pull image \"busy:1\": {throttled}"
        )),
        "{busy:?}"
    );
    assert!(
        busy.contains(&"BackOff Back-off pulling image \"busy:1\"".to_owned()),
        "{busy:?}"
    );
    assert!(
        busy.iter()
            .any(|m| m.starts_with("Pulled Successfully pulled image \"busy:1\"")),
        "{busy:?}"
    );

    // A pull that cannot succeed backs off with the error in its message (1.32+).
    let gone = until(&pods, "gone", |p| {
        waiting(p).is_some_and(|(r, _)| r == "ImagePullBackOff")
    })
    .await;
    assert_eq!(
        waiting(&gone).unwrap().1,
        format!("Back-off pulling image \"gone:1\": ErrImagePull: {missing}")
    );

    until(&pods, "postgres", |p| {
        p.status
            .as_ref()
            .is_some_and(|s| s.phase.as_deref() == Some("Running"))
    })
    .await;
    let redis = until(&pods, "redis", |p| {
        waiting(p).is_some_and(|(r, _)| r != "ContainerCreating")
    })
    .await;
    let (reason, message) = waiting(&redis).unwrap();
    assert_eq!(reason, "CreateContainerConfigError");
    assert!(
        message
            .starts_with("container has runAsNonRoot and image will run as root (pod: \"redis_ns("),
        "{message}"
    );
}

/// The `resourceVersion` of each watch request on pods, in order.
fn watch_versions(api: &StandIn) -> Vec<String> {
    api.requests()
        .iter()
        .filter(|r| {
            r.path == "/api/v1/namespaces/ns/pods" && r.param("watch").as_deref() == Some("true")
        })
        .map(|r| r.param("resourceVersion").unwrap_or_default())
        .collect()
}

type Events = tokio::sync::mpsc::UnboundedReceiver<Result<watcher::Event<Pod>, watcher::Error>>;

async fn next(events: &mut Events) -> Result<watcher::Event<Pod>, watcher::Error> {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event within 5 s")
        .expect("the watcher runs")
}

/// The watcher's events, polled in the background as a real client would.
fn follow(pods: Api<Pod>) -> Events {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut events = watcher(pods, watcher::Config::default()).boxed();
        while let Some(event) = events.next().await {
            let failed = event.is_err();
            if tx.send(event).is_err() {
                return;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    rx
}

#[tokio::test]
async fn watches_get_bookmarks_and_end_with_410_after_a_short_history() {
    let api = StandIn::start().await.unwrap();
    api.set_bookmark_interval(None);
    let client = client(&api).await;
    namespace(&client, "ns", json!({})).await.unwrap();
    namespace(&client, "other", json!({})).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let elsewhere: Api<Pod> = Api::namespaced(client.clone(), "other");
    let mut events = follow(pods.clone());
    assert!(matches!(next(&mut events).await, Ok(watcher::Event::Init)));
    assert!(matches!(
        next(&mut events).await,
        Ok(watcher::Event::InitDone)
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while watch_versions(&api).is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never watched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = api
        .requests()
        .into_iter()
        .rfind(|r| r.param("watch").is_some())
        .unwrap();
    assert_eq!(first.param("allowWatchBookmarks").as_deref(), Some("true"));

    // Changes elsewhere, then a bookmark: the client resumes from it.
    elsewhere
        .create(&PostParams::default(), &bare("a"))
        .await
        .unwrap();
    let expected = elsewhere
        .get("a")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.bookmark_watches();
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.end_watches();
    pods.create(&PostParams::default(), &bare("b"))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut events).await,
        Ok(watcher::Event::Apply(_))
    ));
    assert_eq!(watch_versions(&api).last(), Some(&expected));

    // A short history: while the client cannot watch, more changes than it
    // keeps; its resumed watch ends with 410, and it lists again.
    api.set_watch_history(2);
    api.forbid("watch", "pods");
    api.end_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..5 {
        elsewhere
            .create(&PostParams::default(), &bare(&format!("x{i}")))
            .await
            .unwrap();
    }
    api.clear_requests();
    api.allow_all();
    let mut gone = false;
    loop {
        match next(&mut events).await {
            Err(watcher::Error::WatchError(e)) if e.code == 410 => gone = true,
            // Init, the list's objects, InitDone: the list is done.
            Ok(watcher::Event::InitDone) => break,
            _ => {}
        }
    }
    assert!(gone, "no 410 before the re-list");
    let lists = api
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/ns/pods" && r.param("watch").is_none())
        .count();
    assert_eq!(lists, 1, "{:?}", api.requests());
}
