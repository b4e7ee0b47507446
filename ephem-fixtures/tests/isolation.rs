//! Four shards of one run share nothing: networks, ports, secrets, names.

mod common;

use std::collections::{HashMap, HashSet};

use bollard::query_parameters::ListNetworksOptions;
use common::{container_name, exec, scenario, var};
use ephem_fixtures::Backend;
use futures_util::future::join_all;

const CONFIG: &str = r#"
[services.db]
image = "busybox:1.36"
env = { PASSWORD = "${random}" }
cmd = ["sh", "-c", "mkdir -p /www && echo $PASSWORD > /www/pw && httpd -f -p 8080 -h /www"]
ports = [8080]
wait = { http = "/pw" }
export = { DB_ADDR = "${host}:${port.8080}", DB_PASSWORD = "${env.PASSWORD}" }
"#;

#[tokio::test]
async fn four_shards_are_isolated() {
    scenario("isolation", CONFIG, 4, |s| async move {
        s.backend
            .prepare(&s.run)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let shards: Vec<_> = (1..=4).map(|n| s.shard(n)).collect();
        let envs = join_all(shards.iter().map(|shard| s.backend.provision(shard))).await;
        let envs: Vec<_> = envs
            .into_iter()
            .map(|e| e.unwrap_or_else(|e| panic!("{e}")))
            .collect();

        let addrs: HashSet<&str> = envs.iter().map(|e| var(e, "DB_ADDR")).collect();
        let passwords: HashSet<&str> = envs.iter().map(|e| var(e, "DB_PASSWORD")).collect();
        assert_eq!(
            addrs.len(),
            4,
            "every shard has its own host port: {addrs:?}"
        );
        assert_eq!(passwords.len(), 4, "every shard has its own secret");

        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("cargo-ephem.run={}", s.run.run_id)],
        )]);
        let networks = s
            .docker()
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .unwrap();
        assert_eq!(networks.len(), 4, "one network per shard");

        let one = container_name(&s.run, 1, "db");
        let two = container_name(&s.run, 2, "db");
        // The alias `db` means the shard's own db...
        let (code, body) = exec(
            s.docker(),
            &one,
            &["wget", "-q", "-O-", "http://db:8080/pw"],
        )
        .await;
        assert_eq!((code, body.trim()), (0, var(&envs[0], "DB_PASSWORD")));
        // ...its own container name resolves (so the lookup below can succeed)...
        let (code, out) = exec(s.docker(), &one, &["nslookup", &one]).await;
        assert_eq!(code, 0, "{out}");
        // ...and another shard's container cannot be resolved at all.
        let (code, out) = exec(s.docker(), &one, &["nslookup", &two]).await;
        assert_ne!(code, 0, "shard 1 resolved shard 2's container: {out}");
        s
    })
    .await;
}
