//! Reaching a cluster with the real kube client: kubeconfigs merged by
//! kube's loader, the current or a named context, rotated credentials, and
//! servers that refuse or never answer (within 5 s, naming context and
//! server).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ephem_fixtures::kubernetes::client::connect_with;
use ephem_kube_stand_in::StandIn;

#[tokio::test]
async fn an_unreachable_server_fails_within_5s_naming_context_and_server() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: ci-cluster\n  context:\n    cluster: c\n    user: u\ncurrent-context: ci-cluster\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    let error = connect_with(&[config], None).await.unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        error.starts_with(&format!(
            "cannot reach the Kubernetes API server at http://127.0.0.1:{port} (context ci-cluster):"
        )),
        "{error}"
    );
    assert!(error.contains("refused"), "{error}");

    // A server that accepts but never answers in time.
    let api = StandIn::start().await.unwrap();
    api.set_latency(Duration::from_secs(30));
    let config = dir.path().join("slow");
    api.write_kubeconfig(&config, "slow").unwrap();
    let started = Instant::now();
    let error = connect_with(&[config], None).await.unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        error.contains("(context slow)") && error.contains(&api.url()),
        "{error}"
    );
    assert!(error.contains("no answer to GET /version"), "{error}");
}

#[tokio::test]
async fn connect_picks_the_current_context_or_the_named_one() {
    let (a, b) = (
        StandIn::start().await.unwrap(),
        StandIn::start().await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = vec![dir.path().join("a"), dir.path().join("b")];
    a.write_kubeconfig(&files[0], "ctx-a").unwrap();
    b.write_kubeconfig(&files[1], "ctx-b").unwrap();

    // Merged like KUBECONFIG=a:b: the first file's current-context wins.
    let current = connect_with(&files, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (current.context.as_str(), current.server.as_str()),
        ("ctx-a", a.url().as_str())
    );
    assert!(!current.in_cluster);
    let named = connect_with(&files, Some("ctx-b"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (named.context.as_str(), named.server.as_str()),
        ("ctx-b", b.url().as_str())
    );
    assert_eq!(b.requests().last().unwrap().path, "/version");

    let error = connect_with(&files, Some("prod"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("no context \"prod\"") && error.contains("ctx-a, ctx-b"),
        "{error}"
    );

    b.set_token("rotated");
    let error = connect_with(&files, Some("ctx-b"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("rejected the credentials") && error.contains("(context ctx-b)"),
        "{error}"
    );
}
