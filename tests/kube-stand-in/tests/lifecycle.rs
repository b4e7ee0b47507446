//! The stand-in's cluster side against the real kube client: pods run by a
//! [`Lifecycle`], the events they leave, the `pods` quota, DaemonSet status,
//! and port-forward over WebSocket.

use std::time::Duration;

use ephem_kube_stand_in::{Fate, Lifecycle, StandIn};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, ResourceQuota, Secret};
use kube::api::{ListParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

async fn client(api: &StandIn) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&api.kubeconfig("stand-in")).expect("kubeconfig parses");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

async fn namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

fn pod(name: &str, image: &str, probe: bool, restart: &str) -> Pod {
    let mut container = json!({"name": name, "image": image});
    if probe {
        container["readinessProbe"] = json!({"tcpSocket": {"port": 80}});
    }
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [container], "restartPolicy": restart},
    }))
    .unwrap()
}

/// Waits until `pred` holds for the pod, at most 5 s; returns it.
async fn until(pods: &Api<Pod>, name: &str, pred: impl Fn(&Pod) -> bool) -> Pod {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let pod = pods.get(name).await.unwrap();
        if pred(&pod) {
            return pod;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pod {name} never got there: {:?}",
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

fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.container_statuses.as_ref()?[0]
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

#[tokio::test]
async fn pods_start_log_and_become_ready_after_their_probe() {
    let api = StandIn::start().await.unwrap();
    api.set_lifecycle(
        Lifecycle::new(Duration::from_millis(30), Duration::from_millis(200))
            .rule("postgres", Fate::run(&["ready to accept connections"])),
    );
    let client = client(&api).await;
    namespace(&client, "ns").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    pods.create(
        &PostParams::default(),
        &pod("db", "postgres:15", true, "Never"),
    )
    .await
    .unwrap();
    // Before it starts, its log is refused as the API refuses it.
    let early = pods.logs("db", &LogParams::default()).await.unwrap_err();
    assert!(
        early
            .to_string()
            .contains("is waiting to start: ContainerCreating"),
        "{early}"
    );

    let running = until(&pods, "db", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await;
    assert!(!ready(&running), "the probe has not passed yet");
    let ready_pod = until(&pods, "db", ready).await;
    assert_eq!(ready_pod.spec.unwrap().node_name.as_deref(), Some("node-1"));
    let log = pods.logs("db", &LogParams::default()).await.unwrap();
    assert_eq!(log, "ready to accept connections\n");

    // Without a probe, running is ready.
    pods.create(
        &PostParams::default(),
        &pod("cache", "redis:7", false, "Never"),
    )
    .await
    .unwrap();
    until(&pods, "cache", ready).await;
    let events: Api<Event> = Api::namespaced(client, "ns");
    let reasons: Vec<String> = events
        .list(&ListParams::default().fields("involvedObject.name=db"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert_eq!(reasons, ["Scheduled", "Pulled", "Created", "Started"]);
}

#[tokio::test]
async fn failures_look_like_a_clusters() {
    let api = StandIn::start().await.unwrap();
    api.set_lifecycle(
        Lifecycle::new(Duration::from_millis(10), Duration::from_millis(10))
            .rule(
                "missing",
                Fate::PullFails {
                    message: "rpc error: code = NotFound desc = not found".into(),
                },
            )
            .rule("crasher", Fate::exit(3, &["fatal: no config"]))
            .rule(
                "huge",
                Fate::Unschedulable {
                    message: "0/1 nodes are available: 1 Insufficient memory.".into(),
                },
            ),
    );
    let client = client(&api).await;
    namespace(&client, "ns").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ns");
    let post = PostParams::default();
    pods.create(&post, &pod("pull", "missing:1", false, "Never"))
        .await
        .unwrap();
    pods.create(&post, &pod("once", "crasher:1", false, "Never"))
        .await
        .unwrap();
    pods.create(&post, &pod("loop", "crasher:1", false, "Always"))
        .await
        .unwrap();
    pods.create(&post, &pod("big", "huge:1", false, "Never"))
        .await
        .unwrap();
    pods.create(&post, &pod("bad", "Upper:1", false, "Never"))
        .await
        .unwrap();

    let pulled = until(&pods, "pull", |p| {
        waiting_reason(p).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    assert_eq!(pulled.status.unwrap().phase.as_deref(), Some("Pending"));
    let once = until(&pods, "once", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    })
    .await;
    let state = once.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap();
    assert_eq!(state.terminated.unwrap().exit_code, 3);
    let looping = until(&pods, "loop", |p| {
        waiting_reason(p).as_deref() == Some("CrashLoopBackOff")
    })
    .await;
    let status = &looping.status.unwrap().container_statuses.unwrap()[0];
    assert_eq!(status.restart_count, 1);
    assert_eq!(
        status
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        3
    );
    let big = until(&pods, "big", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.reason.as_deref() == Some("Unschedulable"))
            })
    })
    .await;
    assert_eq!(big.status.unwrap().phase.as_deref(), Some("Pending"));
    until(&pods, "bad", |p| {
        waiting_reason(p).as_deref() == Some("InvalidImageName")
    })
    .await;
    assert_eq!(
        pods.logs("loop", &LogParams::default()).await.unwrap(),
        "fatal: no config\n"
    );

    let events: Api<Event> = Api::namespaced(client, "ns");
    let messages = |pod: &'static str| {
        let events = events.clone();
        async move {
            events
                .list(
                    &ListParams::default()
                        .fields(&format!("involvedObject.name={pod},type=Warning")),
                )
                .await
                .unwrap()
                .items
                .into_iter()
                .filter_map(|e| e.message)
                .collect::<Vec<_>>()
        }
    };
    let pull = messages("pull").await;
    assert!(
        pull.iter()
            .any(|m| m.starts_with("Failed to pull image \"missing:1\": rpc error")),
        "{pull:?}"
    );
    let big = messages("big").await;
    assert_eq!(big, ["0/1 nodes are available: 1 Insufficient memory."]);
}

#[tokio::test]
async fn a_missing_secret_key_is_a_config_error_and_secrets_store_base64() {
    let api = StandIn::start().await.unwrap();
    api.set_lifecycle(Lifecycle::new(Duration::ZERO, Duration::ZERO));
    let client = client(&api).await;
    namespace(&client, "ns").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "ns");
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "stringData": {"web.TOKEN": "abc"}}),
    )
    .unwrap();
    let stored = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert!(stored.string_data.is_none());
    assert_eq!(stored.data.unwrap()["web.TOKEN"].0, b"abc");
    let pods: Api<Pod> = Api::namespaced(client, "ns");
    let mut with_ref = pod("web", "busybox:1", false, "Never");
    with_ref.spec.as_mut().unwrap().containers[0].env = Some(
        serde_json::from_value(
            json!([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "other"}}}]),
        )
        .unwrap(),
    );
    pods.create(&PostParams::default(), &with_ref)
        .await
        .unwrap();
    let pod = until(&pods, "web", |p| {
        waiting_reason(p).as_deref() == Some("CreateContainerConfigError")
    })
    .await;
    let message = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap()
        .message
        .unwrap();
    assert_eq!(message, "couldn't find key other in Secret ns/s");
}

#[tokio::test]
async fn the_pods_quota_refuses_one_pod_too_many_in_the_admissions_words() {
    let api = StandIn::start().await.unwrap();
    let client = client(&api).await;
    namespace(&client, "ns").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "ns");
    let quota: ResourceQuota = serde_json::from_value(
        json!({"metadata": {"name": "ephem-quota"}, "spec": {"hard": {"pods": "1", "requests.cpu": "4"}}}),
    )
    .unwrap();
    quotas.create(&PostParams::default(), &quota).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "ns");
    pods.create(&PostParams::default(), &pod("a", "x:1", false, "Never"))
        .await
        .unwrap();
    let refused = pods
        .create(&PostParams::default(), &pod("b", "x:1", false, "Never"))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = refused else {
        panic!("an API error: {refused}")
    };
    assert_eq!(status.code, 403);
    assert_eq!(
        status.message,
        "pods \"b\" is forbidden: exceeded quota: ephem-quota, requested: pods=1, used: pods=1, limited: pods=1"
    );
    let used = quotas
        .get("ephem-quota")
        .await
        .unwrap()
        .status
        .unwrap()
        .used
        .unwrap();
    assert_eq!(used["pods"].0, "1");
}

#[tokio::test]
async fn a_daemon_set_gets_a_pod_per_node_and_counts_the_ready_ones() {
    let api = StandIn::start().await.unwrap();
    api.set_lifecycle(Lifecycle::new(Duration::from_millis(10), Duration::ZERO).nodes(2));
    let client = client(&api).await;
    namespace(&client, "ns").await;
    let sets: Api<DaemonSet> = Api::namespaced(client.clone(), "ns");
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "pull"},
        "spec": {
            "selector": {"matchLabels": {"app": "pull"}},
            "template": {
                "metadata": {"labels": {"app": "pull"}},
                "spec": {
                    "initContainers": [{"name": "pull-1", "image": "redis:7", "command": ["/bin/sh", "-c", "true"]}],
                    "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }))
    .unwrap();
    sets.create(&PostParams::default(), &ds).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = sets.get("pull").await.unwrap().status.unwrap_or_default();
        if status.number_ready == 2 || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (status.desired_number_scheduled, status.number_ready),
        (2, 2)
    );
    let pods: Api<Pod> = Api::namespaced(client, "ns");
    let listed = pods
        .list(&ListParams::default().labels("app=pull"))
        .await
        .unwrap();
    let mut nodes: Vec<String> = listed
        .items
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["node-1", "node-2"]);
    let init = &listed.items[0]
        .status
        .as_ref()
        .unwrap()
        .init_container_statuses
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .reason
            .as_deref(),
        Some("Completed")
    );
}

/// A local server that echoes what it reads, upper-cased, per connection.
async fn upper_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let upper = buf[..n].to_ascii_uppercase();
                    if stream.write_all(&upper).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn port_forward_relays_bytes_both_ways_per_stream() {
    let api = StandIn::start().await.unwrap();
    let client = client(&api).await;
    namespace(&client, "ns").await;
    let pods: Api<Pod> = Api::namespaced(client, "ns");
    pods.create(&PostParams::default(), &pod("web", "x:1", false, "Never"))
        .await
        .unwrap();
    api.forward(Some("ns"), "web", 8080, upper_echo().await);

    for word in ["first", "second"] {
        let mut forwarder = pods.portforward("web", &[8080]).await.unwrap();
        let mut stream = forwarder.take_stream(8080).unwrap();
        stream.write_all(word.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; word.len()];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, word.to_uppercase().as_bytes());
        drop(stream);
        forwarder.join().await.unwrap();
    }

    // Nothing listens on 9999: the error channel says so, as the kubelet does.
    let mut forwarder = pods.portforward("web", &[9999]).await.unwrap();
    let error = forwarder.take_error(9999).unwrap().await;
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("connection refused")),
        "{error:?}"
    );
    let request = api
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/portforward"))
        .unwrap();
    assert_eq!(request.path, "/api/v1/namespaces/ns/pods/web/portforward");
    assert_eq!(request.param("ports").as_deref(), Some("8080"));
}

#[tokio::test]
async fn ended_watches_resume_from_their_resource_version() {
    let api = StandIn::start().await.unwrap();
    let client = client(&api).await;
    namespace(&client, "ns").await;
    let pods: Api<Pod> = Api::namespaced(client, "ns");
    let mut events = watcher(pods.clone(), watcher::Config::default()).boxed();
    // Init, InitDone
    events.try_next().await.unwrap();
    events.try_next().await.unwrap();
    api.end_watches();
    tokio::time::sleep(Duration::from_millis(50)).await;
    pods.create(&PostParams::default(), &pod("late", "x:1", false, "Never"))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.next().await {
                Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => return p,
                Some(_) => {}
                None => panic!("the watcher ended"),
            }
        }
    })
    .await
    .expect("the watcher resumed");
    assert_eq!(next.metadata.name.as_deref(), Some("late"));
}
