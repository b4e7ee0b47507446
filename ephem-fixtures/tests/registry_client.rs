//! The image cache's registry client against loopback registries written
//! here, which misbehave as real ones do: stalls mid-headers and mid-blob,
//! blobs longer than their descriptor, redirects to storage hosts in every
//! `Location` form, Basic and Bearer auth (a realm with a query, a scope
//! with commas), credentials from a helper, identity tokens, and
//! multi-platform indexes. No Docker needed: fills go to a temporary cache.
//!
//! Every fill runs under a generous guard, so a hang fails the test.

mod fake_registry;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ephem_fixtures::image_cache::layout::digest_of;
use ephem_fixtures::image_cache::registry::{
    CredentialSource, Platform, PlatformSource, RegistrySettings,
};
use ephem_fixtures::image_cache::{CacheError, Filled, ImageCache, Resolve};
use ephem_fixtures::{EnvEvent, ImageRef};
use fake_registry::{Reply, Seen, Server};
use tokio::sync::mpsc;

const REPO: &str = "test/app";
const IDLE: Duration = Duration::from_secs(1);
/// A fill that takes this long has hung.
const GUARD: Duration = Duration::from_secs(60);
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A small image: a config and one layer, and its manifest.
#[derive(Clone)]
struct FakeImage {
    manifest: Vec<u8>,
    blobs: Vec<(String, Vec<u8>)>,
}

impl FakeImage {
    fn new(seed: &str) -> FakeImage {
        let config = format!("{{\"architecture\":\"{seed}\",\"os\":\"linux\"}}").into_bytes();
        // Distinct per seed, so images never share a layer.
        let mut layer = seed.as_bytes().to_vec();
        layer.extend((0..200_000u32).map(|i| (i % 251) as u8));
        let descriptor = |media: &str, bytes: &[u8]| serde_json::json!({"mediaType": media, "digest": digest_of(bytes), "size": bytes.len()});
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer)],
        })
        .to_string()
        .into_bytes();
        FakeImage {
            manifest,
            blobs: vec![(digest_of(&config), config), (digest_of(&layer), layer)],
        }
    }

    fn digest(&self) -> String {
        digest_of(&self.manifest)
    }

    fn layer(&self) -> &(String, Vec<u8>) {
        &self.blobs[1]
    }

    /// The manifest or blob a request asks for, answered plainly.
    fn answer(&self, seen: &Seen) -> Option<Reply> {
        let path = seen.path();
        let rest = path.strip_prefix(&format!("/v2/{REPO}/"))?;
        if let Some(reference) = rest.strip_prefix("manifests/") {
            return (reference == "1" || reference == self.digest())
                .then(|| Reply::ok(MANIFEST_TYPE, self.manifest.clone()));
        }
        let digest = rest.strip_prefix("blobs/")?;
        self.blobs
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, bytes)| Reply::ok("application/octet-stream", bytes.clone()))
    }
}

fn settings(credentials: CredentialSource) -> RegistrySettings {
    RegistrySettings {
        idle_timeout: IDLE,
        platform: PlatformSource::Fixed(Platform::of_daemon("linux", "x86_64")),
        credentials,
    }
}

fn anonymous() -> RegistrySettings {
    settings(CredentialSource::default())
}

/// Fills `127.0.0.1:<port>/test/app:1` into a fresh cache; the result, the
/// events sent, and the cache folder.
async fn fill(
    port: u16,
    settings: RegistrySettings,
) -> (Result<Filled, CacheError>, Vec<EnvEvent>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cache = ImageCache::open(dir.path(), tx)
        .expect("cache opens")
        .with_registry(settings);
    let image = ImageRef::parse(&format!("127.0.0.1:{port}/{REPO}:1")).expect("reference");
    let result = tokio::time::timeout(GUARD, cache.fill(&image, None, Resolve::Recorded))
        .await
        .unwrap_or_else(|_| panic!("the fill hung for {GUARD:?}"));
    drop(cache);
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    (result, events, dir)
}

fn failure(result: Result<Filled, CacheError>) -> String {
    match result {
        Ok(filled) => panic!("the fill succeeded: {filled:?}"),
        Err(e) => e.to_string(),
    }
}

fn warnings(events: &[EnvEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            EnvEvent::Warning { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn temp_files(cache: &Path) -> Vec<PathBuf> {
    let files: Vec<PathBuf> = std::fs::read_dir(cache.join("blobs/sha256"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_stalls_mid_headers_fails_the_fill_naming_registry_and_manifest() {
    let server =
        Server::start(|_| Reply::ThenStall(b"HTTP/1.1 200 OK\r\nContent-Ty".to_vec())).await;
    let (result, _, _dir) = fill(server.port, anonymous()).await;
    let message = failure(result);
    assert!(
        message.contains(&format!("registry {}", server.host()))
            && message.contains(&format!("manifest 1 of {REPO}"))
            && message.contains("within 1s")
            && message.contains("idle-timeout"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_stalls_mid_blob_fails_naming_registry_and_blob() {
    let image = FakeImage::new("stall");
    let (layer, bytes) = image.layer().clone();
    let served = image.clone();
    let server = Server::start(move |seen| {
        if seen.path().ends_with(&layer) {
            let mut head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", bytes.len()).into_bytes();
            head.extend_from_slice(&bytes[..bytes.len() / 2]);
            return Reply::ThenStall(head);
        }
        served.answer(seen).unwrap_or(Reply::status(404))
    })
    .await;
    let (result, _, dir) = fill(server.port, anonymous()).await;
    let message = failure(result);
    assert!(
        message.contains(&format!("registry {} stalled", server.host()))
            && message.contains(&format!("blob {} of {REPO}", image.layer().0))
            && message.contains("nothing for 1s")
            && message.contains("idle-timeout"),
        "{message}"
    );
    assert!(temp_files(dir.path()).is_empty(), "a half blob was left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_longer_than_its_descriptor_is_cut_off() {
    const ENDLESS: u64 = 256 << 20;
    let image = FakeImage::new("long");
    let layer = image.layer().0.clone();
    let declared = image.layer().1.len();
    let served = image.clone();
    // No Content-Length: the body ends when the server closes.
    let server = Server::start(move |seen| {
        if seen.path().ends_with(&layer) {
            return Reply::Stream {
                head: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec(),
                total: ENDLESS,
            };
        }
        served.answer(seen).unwrap_or(Reply::status(404))
    })
    .await;
    let (result, _, dir) = fill(server.port, anonymous()).await;
    let message = failure(result);
    assert!(
        message.contains(&format!("sent more than the {declared} bytes expected"))
            && message.contains("cut off")
            && message.contains(&server.host()),
        "{message}"
    );
    assert!(
        server.streamed() < ENDLESS / 4,
        "the client kept reading: {} bytes went out",
        server.streamed()
    );
    assert!(temp_files(dir.path()).is_empty());

    // An announced length beyond the descriptor is refused before reading.
    let layer = image.layer().0.clone();
    let served = image.clone();
    let server = Server::start(move |seen| {
        if seen.path().ends_with(&layer) {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {ENDLESS}\r\n\r\n");
            return Reply::Stream {
                head: head.into_bytes(),
                total: ENDLESS,
            };
        }
        served.answer(seen).unwrap_or(Reply::status(404))
    })
    .await;
    let (result, _, _dir) = fill(server.port, anonymous()).await;
    let message = failure(result);
    assert!(
        message.contains(&format!("announced {ENDLESS} bytes"))
            && message.contains(&format!("more than the {declared} expected")),
        "{message}"
    );
}

const USER: &str = "ci-user";
const PASSWORD: &str = "pw-5ecret";
const SIGNATURE: &str = "X-Amz-Signature=s1gn3d-s3cret&X-Amz-Expires=60";

fn basic_value(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A Docker configuration folder holding `config`.
fn docker_config(config: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config.json");
    dir
}

/// Credentials of `auths` for `host`, no helpers.
fn auths_for(host: &str) -> (tempfile::TempDir, CredentialSource) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let dir = docker_config(serde_json::json!({"auths": {host: {"auth": auth}}}));
    let source = CredentialSource {
        config_dir: Some(dir.path().to_owned()),
        path: Some(OsString::new()),
    };
    (dir, source)
}

/// A registry that wants Basic credentials on every request and redirects
/// the layer to `location(storage port, layer hex)`; the storage host serves
/// it only with the signed query intact. Returns the fill's result, what
/// the registry and the storage host saw.
async fn fill_through_redirect(
    location: fn(u16, &str) -> String,
) -> (Result<Filled, CacheError>, Vec<Seen>, Vec<Seen>) {
    let image = FakeImage::new("redirect");
    let (layer, bytes) = image.layer().clone();
    let hex = layer.trim_start_matches("sha256:").to_owned();
    let stored = bytes.clone();
    let storage = Server::start(move |seen| {
        if seen.target.ends_with(&format!("?{SIGNATURE}")) {
            Reply::ok("application/octet-stream", stored.clone())
        } else {
            Reply::status(403)
        }
    })
    .await;
    let storage_port = storage.port;
    let served = image.clone();
    let registry = Server::start(move |seen| {
        if seen.path().contains("/storage/") {
            // A relative redirect stays on the registry.
            return if seen.target.ends_with(&format!("?{SIGNATURE}")) {
                Reply::ok("application/octet-stream", bytes.clone())
            } else {
                Reply::status(403)
            };
        }
        if seen.header("authorization") != Some(&basic_value(USER, PASSWORD)) {
            return Reply::status(401).with_header("WWW-Authenticate", r#"Basic realm="fake""#);
        }
        if seen.path().ends_with(&layer) {
            return Reply::status(307).with_header("Location", &location(storage_port, &hex));
        }
        served.answer(seen).unwrap_or(Reply::status(404))
    })
    .await;
    let (_config, credentials) = auths_for(&registry.host());
    let (result, _, _dir) = fill(registry.port, settings(credentials)).await;
    (result, registry.seen(), storage.seen())
}

fn assert_fetched_without_credentials(result: Result<Filled, CacheError>, storage: &[Seen]) {
    result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(storage.len(), 1, "{storage:?}");
    assert!(
        storage[0].header("authorization").is_none(),
        "the storage host got the registry's credentials: {:?}",
        storage[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absolute_redirect_reaches_storage_with_its_query_and_without_credentials() {
    let (result, _, storage) = fill_through_redirect(|port, hex| {
        format!("http://127.0.0.1:{port}/bucket/{hex}?{SIGNATURE}")
    })
    .await;
    assert_fetched_without_credentials(result, &storage);
    assert!(
        storage[0].path().starts_with("/bucket/"),
        "{:?}",
        storage[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scheme_relative_redirect_reaches_storage_without_credentials() {
    let (result, _, storage) =
        fill_through_redirect(|port, hex| format!("//127.0.0.1:{port}/cdn/{hex}?{SIGNATURE}"))
            .await;
    assert_fetched_without_credentials(result, &storage);
    assert!(storage[0].path().starts_with("/cdn/"), "{:?}", storage[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn relative_redirects_stay_on_the_registry_with_their_query() {
    for location in [
        (|_, hex: &str| format!("/storage/{hex}?{SIGNATURE}")) as fn(u16, &str) -> String,
        |_, hex: &str| format!("../storage/{hex}?{SIGNATURE}"),
    ] {
        let (result, registry, storage) = fill_through_redirect(location).await;
        result.unwrap_or_else(|e| panic!("{e}"));
        assert!(storage.is_empty(), "{storage:?}");
        let followed: Vec<&Seen> = registry
            .iter()
            .filter(|s| s.path().contains("/storage/"))
            .collect();
        assert_eq!(followed.len(), 1, "{registry:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_redirect_is_reported_without_its_query_string() {
    let (result, _, storage) = fill_through_redirect(|port, hex| {
        format!("http://127.0.0.1:{port}/bucket/{hex}?X-Amz-Signature=expired-s3cret")
    })
    .await;
    let message = failure(result);
    assert_eq!(storage.len(), 1);
    assert!(
        message.contains("403") && message.contains("redirected from registry 127.0.0.1:"),
        "{message}"
    );
    assert!(
        !message.contains("s3cret") && !message.contains("X-Amz"),
        "the signed query leaked: {message}"
    );
}

const TOKEN: &str = "tok-3c7e9";

/// A registry that wants a Bearer token from its own `/token` realm (with
/// a query of its own) and a challenge scope with commas; `token_answer`
/// decides what the realm says to each token request.
async fn bearer_registry(image: FakeImage, token_answer: fn(&Seen) -> Reply) -> Server {
    let port = std::sync::Arc::new(std::sync::OnceLock::<u16>::new());
    let realm_port = port.clone();
    let server = Server::start(move |seen| {
        if seen.path() == "/token" {
            return token_answer(seen);
        }
        if seen.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            let realm = format!(
                "http://127.0.0.1:{}/token?account=ci&team=a%2Cb",
                realm_port.get().copied().unwrap_or(0)
            );
            let challenge = format!(
                r#"Bearer realm="{realm}",service="fake registry",scope="repository:{REPO}:pull,push""#
            );
            return Reply::status(401).with_header("WWW-Authenticate", &challenge);
        }
        image.answer(seen).unwrap_or(Reply::status(404))
    })
    .await;
    let _ = port.set(server.port);
    server
}

fn token_requests(server: &Server) -> Vec<Seen> {
    server
        .seen()
        .into_iter()
        .filter(|s| s.path() == "/token")
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bearer_challenge_with_commas_and_a_realm_query_gets_a_token() {
    let server = bearer_registry(FakeImage::new("bearer"), |seen| {
        if seen.header("authorization") == Some(&basic_value(USER, PASSWORD)) {
            Reply::ok(
                "application/json",
                format!("{{\"token\":\"{TOKEN}\"}}").into_bytes(),
            )
        } else {
            Reply::status(401)
        }
    })
    .await;
    let (_config, credentials) = auths_for(&server.host());
    let (result, events, _dir) = fill(server.port, settings(credentials)).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    let asked = token_requests(&server);
    assert_eq!(asked.len(), 1, "one token for the repository: {asked:?}");
    let query = asked[0].query();
    let get = |k: &str| -> Vec<&str> {
        query
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(
        get("account"),
        ["ci"],
        "the realm's own query is kept: {query:?}"
    );
    assert_eq!(get("team"), ["a,b"], "{query:?}");
    assert_eq!(get("service"), ["fake registry"], "{query:?}");
    assert_eq!(
        get("scope"),
        [
            format!("repository:{REPO}:pull"),
            format!("repository:{REPO}:pull,push")
        ],
        "the quoted scope arrives whole: {query:?}"
    );
    let shown = format!("{events:?}");
    assert!(
        !shown.contains(PASSWORD) && !shown.contains(TOKEN),
        "{shown}"
    );
}

/// A `docker-credential-test` on a PATH of its own that answers with
/// `username`/`secret` and records the server URL it was asked for.
fn fake_helper(username: &str, secret: &str) -> (tempfile::TempDir, OsString) {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().expect("temp dir");
    let script = bin.path().join("docker-credential-test");
    let asked = bin.path().join("asked");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 3\ncat > '{}'\nprintf '{{\"ServerURL\":\"x\",\"Username\":\"{username}\",\"Secret\":\"{secret}\"}}'\n",
            asked.display()
        ),
    )
    .expect("helper");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path =
        std::env::join_paths([bin.path(), Path::new("/usr/bin"), Path::new("/bin")]).expect("PATH");
    (bin, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credential_helper_answers_basic_auth() {
    let image = FakeImage::new("helper");
    let server = Server::start(move |seen| {
        if seen.header("authorization") != Some(&basic_value("helper-user", "helper-s3cret")) {
            return Reply::status(401).with_header("WWW-Authenticate", r#"Basic realm="fake""#);
        }
        image.answer(seen).unwrap_or(Reply::status(404))
    })
    .await;
    let (bin, path) = fake_helper("helper-user", "helper-s3cret");
    // The helper wins over an `auths` entry for the same host, as in Docker.
    let config = docker_config(serde_json::json!({
        "credHelpers": {server.host(): "test"},
        "auths": {server.host(): {"auth": "d3Jvbmc6d3Jvbmc="}},
    }));
    let credentials = CredentialSource {
        config_dir: Some(config.path().to_owned()),
        path: Some(path),
    };
    let (result, events, _dir) = fill(server.port, settings(credentials)).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read_to_string(bin.path().join("asked")).expect("the helper ran"),
        server.host(),
        "the helper is asked for the registry host"
    );
    assert!(warnings(&events).is_empty(), "{events:?}");
    assert!(!format!("{events:?}").contains("helper-s3cret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_identity_token_from_a_helper_is_exchanged_at_the_realm() {
    let server = bearer_registry(FakeImage::new("identity"), |seen| {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(seen.body.as_bytes())
            .into_owned()
            .collect();
        let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
        if seen.method == "POST"
            && has("grant_type", "refresh_token")
            && has("refresh_token", "refresh-s3cret")
            && has("service", "fake registry")
            && seen.header("authorization").is_none()
        {
            Reply::ok(
                "application/json",
                format!("{{\"access_token\":\"{TOKEN}\"}}").into_bytes(),
            )
        } else {
            Reply::status(400)
        }
    })
    .await;
    let (_bin, path) = fake_helper("<token>", "refresh-s3cret");
    let config = docker_config(serde_json::json!({"credsStore": "test"}));
    let credentials = CredentialSource {
        config_dir: Some(config.path().to_owned()),
        path: Some(path),
    };
    let (result, _, _dir) = fill(server.port, settings(credentials)).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    let asked = token_requests(&server);
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].method, "POST");
    assert!(
        asked[0].query().contains(&("account".into(), "ci".into())),
        "{:?}",
        asked[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_helper_is_a_warning_naming_it_then_an_anonymous_pull() {
    let server = bearer_registry(FakeImage::new("anonymous"), |seen| {
        if seen.header("authorization").is_none() {
            Reply::ok(
                "application/json",
                format!("{{\"token\":\"{TOKEN}\"}}").into_bytes(),
            )
        } else {
            Reply::status(401)
        }
    })
    .await;
    let config =
        docker_config(serde_json::json!({"credHelpers": {server.host(): "not-installed"}}));
    let credentials = CredentialSource {
        config_dir: Some(config.path().to_owned()),
        path: Some(OsString::from("/usr/bin:/bin")),
    };
    let (result, events, _dir) = fill(server.port, settings(credentials)).await;
    result.unwrap_or_else(|e| panic!("{e}"));
    let warned = warnings(&events);
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("docker-credential-not-installed")
            && warned[0].contains("credHelpers")
            && warned[0].contains("without credentials"),
        "{warned:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_say_so_without_showing_them() {
    let server = bearer_registry(FakeImage::new("refused"), |_| Reply::status(401)).await;
    let (_config, credentials) = auths_for(&server.host());
    let (result, _, _dir) = fill(server.port, settings(credentials)).await;
    let message = failure(result);
    assert!(
        message.contains("refused a pull token") && message.contains("credentials found"),
        "{message}"
    );
    assert!(!message.contains(PASSWORD), "{message}");
}

/// An index of four platforms' images; the fill must take `wanted`'s only.
async fn fill_from_index(
    platform: Platform,
) -> (Result<Filled, CacheError>, Vec<Seen>, Vec<FakeImage>) {
    let images: Vec<FakeImage> = ["amd64", "arm64", "armv7", "s390x"]
        .iter()
        .map(|s| FakeImage::new(s))
        .collect();
    let entry = |image: &FakeImage, arch: &str, variant: Option<&str>| {
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        serde_json::json!({"mediaType": MANIFEST_TYPE, "digest": image.digest(), "size": image.manifest.len(), "platform": platform})
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            entry(&images[0], "amd64", None),
            entry(&images[1], "arm64", Some("v8")),
            entry(&images[2], "arm", Some("v7")),
            entry(&images[3], "s390x", None),
        ],
    })
    .to_string()
    .into_bytes();
    let served = images.clone();
    let server = Server::start(move |seen| {
        if seen.path() == format!("/v2/{REPO}/manifests/1") {
            return Reply::ok("application/vnd.oci.image.index.v1+json", index.clone());
        }
        served
            .iter()
            .find_map(|image| image.answer(seen))
            .unwrap_or(Reply::status(404))
    })
    .await;
    let settings = RegistrySettings {
        platform: PlatformSource::Fixed(platform),
        ..anonymous()
    };
    let (result, _, _dir) = fill(server.port, settings).await;
    (result, server.seen(), images)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemons_platform_chooses_the_manifest_of_an_index() {
    for (arch, wanted) in [("aarch64", 1), ("armv7l", 2), ("x86_64", 0)] {
        let (result, seen, images) = fill_from_index(Platform::of_daemon("linux", arch)).await;
        let filled = result.unwrap_or_else(|e| panic!("{arch}: {e}"));
        assert_eq!(filled.descriptor.digest, images[wanted].digest(), "{arch}");
        for (i, image) in images.iter().enumerate() {
            let fetched = seen.iter().any(|s| s.path().ends_with(&image.layer().0));
            assert_eq!(
                fetched,
                i == wanted,
                "{arch}: image {i}'s layer fetched: {fetched}"
            );
        }
    }
    let (result, _, _) = fill_from_index(Platform::of_daemon("linux", "ppc64le")).await;
    let message = failure(result);
    assert!(
        message.contains("no manifest for the daemon's platform linux/ppc64le")
            && message.contains("linux/arm64/v8"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_daemon_reports_its_platform_in_index_terms() {
    let (platform, warning) = PlatformSource::LocalDaemon.resolve().await;
    assert_eq!(warning, None, "a daemon runs on this machine");
    let uname = std::process::Command::new("docker")
        .args(["info", "--format", "{{.Architecture}}"])
        .output()
        .expect("docker CLI");
    let machine = String::from_utf8_lossy(&uname.stdout).trim().to_owned();
    assert_eq!(platform, Platform::of_daemon("linux", &machine));
    assert!(
        ["amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"]
            .contains(&platform.architecture.as_str()),
        "{machine} maps to {platform}"
    );
}
