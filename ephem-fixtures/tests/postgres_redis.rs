//! A real Postgres and Redis shard, reached through the exported variables.

mod common;

use std::process::Command;

use common::{scenario, var};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG: &str = r#"
[services.postgres]
image = "postgres:15-bookworm"
env = { POSTGRES_PASSWORD = "${random}", POSTGRES_DB = "app" }
ports = [5432]
args = ["-c", "fsync=off"]
wait = { log = "database system is ready to accept connections", times = 2 }
startup-timeout = "90s"
export = { DATABASE_URL = "postgres://postgres:${env.POSTGRES_PASSWORD}@${host}:${port.5432}/app" }

[services.redis]
image = "redis:7-bookworm"
ports = [6379]
wait = { tcp = 6379 }
export = { REDIS_URL = "redis://${host}:${port.6379}" }
"#;

#[tokio::test]
async fn postgres_and_redis_answer_on_the_exported_urls() {
    scenario("pg-redis", CONFIG, 1, |s| async move {
        let env = s.up(1).await.unwrap_or_else(|e| panic!("{e}"));
        let url = var(&env, "DATABASE_URL").to_owned();
        let password = url.split(':').nth(2).unwrap().split('@').next().unwrap();
        assert!(
            env.secrets.contains(&password.to_owned()),
            "the password is a secret to mask"
        );

        // psql runs off the async runtime's threads.
        let output = tokio::task::spawn_blocking(move || {
            Command::new("psql")
                .arg(&url)
                .args([
                    "-tA",
                    "-c",
                    "select current_database(), current_setting('fsync'), 40 + 2",
                ])
                .output()
        })
        .await
        .unwrap()
        .expect("psql runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // `args` reached the server: fsync is off.
        assert_eq!(stdout.trim(), "app|off|42");

        let redis = var(&env, "REDIS_URL")
            .trim_start_matches("redis://")
            .to_owned();
        let mut stream = tokio::net::TcpStream::connect(&redis)
            .await
            .expect("connect to redis");
        stream.write_all(b"PING\r\n").await.unwrap();
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"+PONG\r\n");
        s
    })
    .await;
}
