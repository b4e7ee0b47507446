//! Templates, dependencies, aliases, `args`, labels and hints on a real shard.

mod common;

use common::{container_name, exec, scenario, var};

const CONFIG: &str = r#"
[services.web]
image = "busybox:1.36"
cmd = ["sh", "-c", "mkdir -p /www && echo $TOKEN > /www/token && sleep 1 && httpd -f -p 8080 -h /www"]
env = { TOKEN = "${random}", SHARD = "${shard}", RUN = "${run}" }
ports = [8080]
wait = { http = "/token" }
export = { WEB_URL = "http://${host}:${port.8080}/token", WEB_TOKEN = "${env.TOKEN}", WEB_SHARD = "${shard}", WEB_RUN = "${run}", FRESH = "${random}", LITERAL = "$${host}" }

# No cmd: args extend the image's CMD (["sh"]). The client only logs
# "reached-web" if web was ready before it started and answers by alias.
[services.client]
image = "busybox:1.36"
depends-on = ["web"]
env = { WEB_TOKEN = "${services.web.env.TOKEN}" }
args = ["-c", "wget -q -O- http://web:8080/token | grep -qx \"$WEB_TOKEN\" && echo reached-web; sleep 300"]
wait = { log = "reached-web" }
startup-timeout = "20s"
"#;

#[tokio::test]
async fn exports_secrets_dependencies_and_args() {
    scenario("templating", CONFIG, 2, |s| async move {
        let env = s.up(2).await.unwrap_or_else(|e| panic!("{e}"));

        let token = var(&env, "WEB_TOKEN");
        let fresh = var(&env, "FRESH");
        assert_eq!(token.len(), 24);
        assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(token, fresh, "every ${{random}} is drawn anew");
        assert!(env.secrets.contains(&token.to_owned()) && env.secrets.contains(&fresh.to_owned()));
        assert_eq!(var(&env, "WEB_SHARD"), "2");
        assert_eq!(var(&env, "WEB_RUN"), s.run.run_id);
        assert_eq!(var(&env, "LITERAL"), "${host}");

        // The exported URL reaches the service and serves the same secret.
        let url = var(&env, "WEB_URL");
        let address = url.trim_start_matches("http://").trim_end_matches("/token");
        assert!(address.starts_with("127.0.0.1:"), "{url}");
        let (code, body) = exec(
            s.docker(),
            &container_name(&s.run, 2, "client"),
            &["wget", "-q", "-O-", "http://web:8080/token"],
        )
        .await;
        assert_eq!((code, body.trim()), (0, token));

        // args were appended to the image's CMD.
        let client = s
            .docker()
            .inspect_container(&container_name(&s.run, 2, "client"), None)
            .await
            .unwrap();
        let cmd = client.config.as_ref().unwrap().cmd.clone().unwrap();
        assert_eq!(cmd[..2], ["sh".to_owned(), "-c".to_owned()]);

        // Labels say whose the container is and until when.
        let labels = client.config.unwrap().labels.unwrap();
        assert_eq!(labels["cargo-ephem.run"], s.run.run_id);
        assert_eq!(labels["cargo-ephem.shard"], "2");
        assert_eq!(labels["cargo-ephem.service"], "client");
        assert_eq!(labels["cargo-ephem.pid"], std::process::id().to_string());
        assert!(!labels["cargo-ephem.host"].is_empty());
        assert!(labels["cargo-ephem.expires"].parse::<u64>().unwrap() > 1_700_000_000);

        // Only loopback is published.
        let web = s
            .docker()
            .inspect_container(&container_name(&s.run, 2, "web"), None)
            .await
            .unwrap();
        let ports = web.network_settings.unwrap().ports.unwrap();
        for binding in ports.values().flatten().flatten() {
            assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        }

        let hints = env.connect_hints.join("\n");
        assert!(
            hints.contains(&format!(
                "web: {address} (container {})",
                container_name(&s.run, 2, "web")
            )),
            "{hints}"
        );
        assert!(
            hints.contains(&format!("label=cargo-ephem.run={}", s.run.run_id)),
            "{hints}"
        );
        s
    })
    .await;
}
