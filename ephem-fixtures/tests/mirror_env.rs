//! `EPHEM_REGISTRY_MIRROR` overrides `[images] mirror`.
//!
//! Its own test binary: it sets an environment variable no other test may see.

use ephem_fixtures::{Backend, DockerBackend, EnvError, EphemConfig, RunContext};

#[tokio::test]
async fn the_environment_variable_wins_over_the_file() {
    let text = "[images]\nmirror = \"localhost:5000\"\n[services.box]\nimage = \"busybox:tag-only-for-mirror-env-test\"\n";
    let config = EphemConfig::parse(text, "ephem.toml").unwrap();
    assert_eq!(config.effective_mirror().as_deref(), Some("localhost:5000"));

    // Nothing listens on port 1: the pull must go there and fail, naming it.
    std::env::set_var("EPHEM_REGISTRY_MIRROR", "127.0.0.1:1");
    assert_eq!(config.effective_mirror().as_deref(), Some("127.0.0.1:1"));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let backend = DockerBackend::connect(config, tx)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let run = RunContext {
        run_id: "mirror-env".into(),
        shard_count: 1,
        expires_at: std::time::SystemTime::now(),
    };
    match backend.prepare(&run).await {
        Err(EnvError::Pull {
            image, registry, ..
        }) => {
            assert_eq!(image, "busybox:tag-only-for-mirror-env-test");
            assert_eq!(registry, "127.0.0.1:1");
        }
        other => panic!("expected a pull error from the overriding mirror, got {other:?}"),
    }
    std::env::remove_var("EPHEM_REGISTRY_MIRROR");
}
