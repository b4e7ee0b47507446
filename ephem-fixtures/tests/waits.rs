//! Every wait kind, succeeding and timing out, against real busybox containers.

mod common;

use common::{not_ready, scenario, var};

/// A busybox service running `script` with `wait`, publishing 8080.
fn busybox(script: &str, wait: &str, extra: &str) -> String {
    format!(
        r#"
[services.box]
image = "busybox:1.36"
cmd = ["sh", "-c", {script:?}]
ports = [8080]
wait = {wait}
startup-timeout = "4s"
export = {{ BOX = "${{host}}:${{port.8080}}" }}
{extra}
"#
    )
}

#[tokio::test]
async fn log_wait_succeeds_on_the_nth_line_from_stderr_too() {
    let toml = busybox(
        "sleep 1; echo ready; echo ready >&2; sleep 300",
        r#"{ log = "ready", times = 2 }"#,
        "",
    );
    scenario("log-ok", &toml, 1, |s| async move {
        let env = s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(var(&env, "BOX").starts_with("127.0.0.1:"));
        s
    })
    .await;
}

#[tokio::test]
async fn log_wait_with_regex() {
    let toml = busybox(
        "echo 'listening on port 8080'; sleep 300",
        r#"{ log = "on port [0-9]+$", regex = true }"#,
        "",
    );
    scenario("log-regex", &toml, 1, |s| async move {
        s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        s
    })
    .await;
}

#[tokio::test]
async fn log_wait_times_out_while_the_container_runs() {
    let toml = busybox(
        "echo ready once; sleep 300",
        r#"{ log = "ready", times = 2 }"#,
        "",
    );
    scenario("log-timeout", &toml, 1, |s| async move {
        let (service, reason, logs) = not_ready(s.up(1).await);
        assert_eq!(service, "box");
        assert!(reason.contains("timed out after 4s"), "{reason}");
        assert!(reason.contains("saw 1 of 2"), "{reason}");
        assert!(reason.contains("still running"), "{reason}");
        assert!(logs.iter().any(|l| l.contains("ready once")), "{logs:?}");
        s
    })
    .await;
}

#[tokio::test]
async fn exec_wait_succeeds_once_the_command_exits_zero() {
    let toml = busybox(
        "sleep 1; touch /tmp/$FLAG; sleep 300",
        r#"{ exec = ["test", "-f", "/tmp/${env.FLAG}"], interval = "100ms" }"#,
        r#"env = { FLAG = "up" }"#,
    );
    scenario("exec-ok", &toml, 1, |s| async move {
        s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        s
    })
    .await;
}

#[tokio::test]
async fn exec_wait_times_out_with_the_last_exit_code() {
    let toml = busybox(
        "sleep 300",
        r#"{ exec = ["sh", "-c", "echo not yet; exit 7"] }"#,
        "",
    );
    scenario("exec-timeout", &toml, 1, |s| async move {
        let (_, reason, _) = not_ready(s.up(1).await);
        assert!(reason.contains("timed out"), "{reason}");
        assert!(reason.contains("exited with code 7: not yet"), "{reason}");
        s
    })
    .await;
}

/// More than 4 KiB of multi-byte output used to panic when it was cut inside
/// a character (3-byte `€`, so that every cut at 2 KiB from the end falls
/// inside one); the wait must fail as a wait, naming the command and code.
#[tokio::test]
async fn exec_wait_with_long_multibyte_output_fails_cleanly() {
    let script = "i=0; while [ $i -lt 3000 ]; do printf '€'; i=$((i+1)); done; exit 1";
    let toml = busybox(
        "sleep 300",
        &format!(r#"{{ exec = ["sh", "-c", {script:?}], interval = "100ms" }}"#),
        "",
    );
    scenario("exec-utf8", &toml, 1, |s| async move {
        let (_, reason, _) = not_ready(s.up(1).await);
        assert!(reason.contains("timed out"), "{reason}");
        assert!(reason.contains(r#"exec "sh -c i=0;"#), "{reason}");
        // The end of the last line, cut on a character boundary.
        assert!(reason.contains("exited with code 1: ...€€€"), "{reason}");
        assert!(!reason.contains('\u{FFFD}'), "{reason}");
        assert!(reason.matches('€').count() <= 300, "{reason}");
        s
    })
    .await;
}

#[tokio::test]
async fn tcp_wait_succeeds_once_the_server_listens() {
    let toml = busybox("sleep 1; httpd -f -p 8080", "{ tcp = 8080 }", "");
    scenario("tcp-ok", &toml, 1, |s| async move {
        let env = s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        // Ready means a real server answers, not only docker-proxy.
        let reply = http_get(var(&env, "BOX"), "/").await;
        assert!(reply.starts_with("HTTP/1."), "{reply}");
        s
    })
    .await;
}

/// docker-proxy accepts on the published port even when nothing listens in
/// the container; the tcp wait must not be fooled by that.
#[tokio::test]
async fn tcp_wait_is_not_fooled_by_docker_proxy() {
    let toml = busybox("sleep 300", "{ tcp = 8080 }", "");
    scenario("tcp-proxy", &toml, 1, |s| async move {
        let (_, reason, _) = not_ready(s.up(1).await);
        assert!(reason.contains("timed out after 4s"), "{reason}");
        assert!(reason.contains("tcp 127.0.0.1:"), "{reason}");
        s
    })
    .await;
}

#[tokio::test]
async fn http_wait_succeeds_on_2xx() {
    let toml = busybox(
        "mkdir -p /www && echo ok > /www/health && sleep 1 && httpd -f -p 8080 -h /www",
        r#"{ http = "/health" }"#,
        "",
    );
    scenario("http-ok", &toml, 1, |s| async move {
        let env = s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(http_get(var(&env, "BOX"), "/health")
            .await
            .contains(" 200 "));
        s
    })
    .await;
}

#[tokio::test]
async fn http_wait_with_an_explicit_status() {
    let toml = busybox(
        "httpd -f -p 8080 -h /",
        r#"{ http = "/missing", status = 404 }"#,
        "",
    );
    scenario("http-status", &toml, 1, |s| async move {
        s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        s
    })
    .await;
}

#[tokio::test]
async fn http_wait_times_out_on_the_wrong_status() {
    let toml = busybox(
        "mkdir -p /www && httpd -f -p 8080 -h /www",
        r#"{ http = "/health" }"#,
        "",
    );
    scenario("http-timeout", &toml, 1, |s| async move {
        let (_, reason, _) = not_ready(s.up(1).await);
        assert!(reason.contains("answered 404, expected 2xx"), "{reason}");
        s
    })
    .await;
}

/// busybox httpd serving a file from /var/www.
const SERVE_FILE: &str =
    "mkdir -p /var/www && echo ok > /var/www/ok.txt && httpd -f -p 8080 -h /var/www";

#[tokio::test]
async fn http_wait_is_ready_when_a_served_file_answers_200() {
    let toml = busybox(SERVE_FILE, r#"{ http = "/ok.txt", status = 200 }"#, "");
    scenario("http-file", &toml, 1, |s| async move {
        let env = s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(http_get(var(&env, "BOX"), "/ok.txt")
            .await
            .ends_with("ok\n"));
        s
    })
    .await;
}

#[tokio::test]
async fn http_wait_for_another_status_names_the_answered_code() {
    let toml = busybox(SERVE_FILE, r#"{ http = "/ok.txt", status = 204 }"#, "");
    scenario("http-file-status", &toml, 1, |s| async move {
        let (_, reason, _) = not_ready(s.up(1).await);
        assert!(reason.contains("GET http://127.0.0.1:"), "{reason}");
        assert!(
            reason.contains("/ok.txt answered 200, expected 204"),
            "{reason}"
        );
        assert!(!reason.contains('\n'), "{reason}");
        s
    })
    .await;
}

#[tokio::test]
async fn healthcheck_wait_succeeds_with_a_configured_healthcheck() {
    let toml = busybox(
        "sleep 1; touch /tmp/healthy; sleep 300",
        "{ healthcheck = true }",
        r#"healthcheck = { test = ["test", "-f", "/tmp/healthy"], interval = "300ms" }"#,
    );
    scenario("health-ok", &toml, 1, |s| async move {
        s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        let inspect = s
            .docker()
            .inspect_container(&common::container_name(&s.run, 1, "box"), None)
            .await
            .unwrap();
        let health = inspect.state.unwrap().health.unwrap().status.unwrap();
        assert_eq!(health, bollard::models::HealthStatusEnum::HEALTHY);
        s
    })
    .await;
}

#[tokio::test]
async fn healthcheck_wait_times_out_when_unhealthy() {
    let toml = busybox(
        "sleep 300",
        "{ healthcheck = true }",
        r#"healthcheck = { test = ["false"], interval = "300ms", retries = 1 }"#,
    );
    scenario("health-timeout", &toml, 1, |s| async move {
        let (_, reason, _) = not_ready(s.up(1).await);
        assert!(reason.contains("timed out"), "{reason}");
        assert!(
            reason.contains("unhealthy") || reason.contains("starting"),
            "{reason}"
        );
        s
    })
    .await;
}

#[tokio::test]
async fn healthcheck_wait_on_an_image_without_one_fails_at_once() {
    // A long timeout, so that "fails at once" cannot be confused with timing out.
    let toml = busybox("sleep 300", "{ healthcheck = true }", "").replace("\"4s\"", "\"60s\"");
    scenario("health-none", &toml, 1, |s| async move {
        let started = std::time::Instant::now();
        let (_, reason, _) = not_ready(s.up(1).await);
        assert!(reason.contains("has no HEALTHCHECK"), "{reason}");
        let elapsed = started.elapsed();
        assert!(
            elapsed < std::time::Duration::from_secs(30),
            "waited {elapsed:?} for a check that cannot pass"
        );
        s
    })
    .await;
}

#[tokio::test]
async fn no_wait_means_running() {
    let toml = busybox("sleep 300", r#"{ log = "x" }"#, "").replace("wait = { log = \"x\" }\n", "");
    scenario("running", &toml, 1, |s| async move {
        s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        s
    })
    .await;
}

/// One HTTP/1.0 GET; returns the whole answer.
async fn http_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}
