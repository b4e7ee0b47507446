//! Benchmark: time from start to every shard's environment ready, for a
//! Postgres + Redis configuration, and registry pulls from an empty store.
//!
//! ```text
//! cargo run --release -p ephem-fixtures --example env_ready -- [--runs N] [--cold] [--registry-log PATH]
//! ```
//!
//! Warm: images present; for 1 and 4 shards, N runs each (prepare + all
//! provisions concurrently), median / min / max. Teardown is not timed.
//! Cold (`--cold`): removes the two images locally, then one 4-shard run;
//! counts `ImageReady { pulled: true }` events and, when the registry's access
//! log is readable, the manifest requests it served for each image. It
//! force-removes those images, so do not run it beside tests that use them.

use std::time::{Duration, Instant, SystemTime};

use bollard::query_parameters::RemoveImageOptions;
use ephem_fixtures::{Backend, DockerBackend, EnvEvent, EphemConfig, RunContext, ShardContext};
use futures_util::future::join_all;

/// The main job's configuration: what the README's example runs.
const CONFIG_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/postgres-redis/ephem.toml"
);

const IMAGES: [(&str, &str); 2] = [
    (
        "postgres:15-bookworm",
        "library/postgres/manifests/15-bookworm",
    ),
    ("redis:7-bookworm", "library/redis/manifests/7-bookworm"),
];

struct Args {
    runs: usize,
    cold: bool,
    registry_log: String,
}

fn args() -> Result<Args, String> {
    let mut parsed = Args {
        runs: 5,
        cold: false,
        registry_log: "/var/log/ephem-registry.log".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--runs" => {
                parsed.runs = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--runs needs a number")?
            }
            "--cold" => parsed.cold = true,
            "--registry-log" => {
                parsed.registry_log = it.next().ok_or("--registry-log needs a path")?
            }
            other => {
                return Err(format!(
                    "unknown argument {other}; use --runs N, --cold, --registry-log PATH"
                ))
            }
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("env_ready: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let args = args()?;
    let config = EphemConfig::load(CONFIG_PATH).map_err(|e| e.to_string())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = DockerBackend::connect(config.clone(), tx)
        .await
        .map_err(|e| e.to_string())?;

    if args.cold {
        for (image, _) in IMAGES {
            for name in [image.to_owned(), format!("localhost:5000/library/{image}")] {
                let options = RemoveImageOptions {
                    force: true,
                    ..Default::default()
                };
                let _ = backend
                    .client()
                    .remove_image(&name, Some(options), None)
                    .await;
            }
        }
        let log_before = std::fs::read_to_string(&args.registry_log)
            .map(|l| l.len())
            .ok();
        let elapsed = one_run(&backend, 4, "cold").await?;
        let mut pulled = Vec::new();
        while let Ok(event) = rx.try_recv() {
            if let EnvEvent::ImageReady {
                image,
                pulled: true,
            } = event
            {
                pulled.push(image);
            }
        }
        println!(
            "cold 4-shard run: {:.2}s, ImageReady {{ pulled: true }} events: {} {:?}",
            elapsed.as_secs_f64(),
            pulled.len(),
            pulled
        );
        if let (Some(before), Ok(log)) = (log_before, std::fs::read_to_string(&args.registry_log)) {
            let new = log.get(before..).unwrap_or("");
            for (image, manifest) in IMAGES {
                // Access-log lines only (the registry also logs each response
                // as a structured line): one HEAD or GET of the tag per pull.
                let requests = new
                    .lines()
                    .filter(|l| {
                        l.contains(&format!("] \"HEAD /v2/{manifest} "))
                            || l.contains(&format!("] \"GET /v2/{manifest} "))
                    })
                    .count();
                println!("  registry log: {requests} manifest request(s) for {image}");
            }
        }
    }

    // A fresh backend: the cold run's image cache must not make warm runs look faster.
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = DockerBackend::connect(config, tx)
        .await
        .map_err(|e| e.to_string())?;
    for shards in [1u32, 4] {
        let mut times = Vec::new();
        for i in 0..args.runs {
            times.push(one_run(&backend, shards, &format!("w{shards}{i}")).await?);
        }
        times.sort();
        let secs = |d: &Duration| d.as_secs_f64();
        println!(
            "warm {shards} shard(s), {} runs: median {:.2}s, min {:.2}s, max {:.2}s",
            times.len(),
            secs(&times[times.len() / 2]),
            secs(&times[0]),
            secs(&times[times.len() - 1])
        );
    }
    Ok(())
}

/// Prepare + provision `shards` shards concurrently; always tears down.
async fn one_run(backend: &DockerBackend, shards: u32, tag: &str) -> Result<Duration, String> {
    let mut id = [0u8; 4];
    getrandom::fill(&mut id).map_err(|e| e.to_string())?;
    let run = RunContext {
        run_id: format!(
            "{}-bench-{tag}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        shard_count: shards,
        expires_at: SystemTime::now() + Duration::from_secs(600),
    };
    let contexts: Vec<ShardContext> = (1..=shards)
        .map(|shard| ShardContext {
            run: run.clone(),
            shard,
        })
        .collect();
    let started = Instant::now();
    let result = async {
        backend.prepare(&run).await?;
        for env in join_all(contexts.iter().map(|c| backend.provision(c))).await {
            env?;
        }
        Ok::<_, ephem_fixtures::EnvError>(())
    }
    .await;
    let elapsed = started.elapsed();
    for context in &contexts {
        if let Err(e) = backend.teardown(context).await {
            eprintln!("env_ready: {e}");
        }
    }
    result.map_err(|e| e.to_string())?;
    Ok(elapsed)
}
