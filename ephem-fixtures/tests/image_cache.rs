//! The warm image cache against the real daemon and the registry on
//! 127.0.0.1:5000: fill, restore with the registry gone, shared layers
//! stored once, corrupt blobs refetched, concurrent fills, prune.
//!
//! Every test builds images of its own (`FROM busybox:1.36` plus a file,
//! under a random repository), pushes them, and removes them from the daemon
//! and the registry on drop, so tests beside it never lose an image. The registry is reached
//! through a counting loopback proxy, which proves how many connections a
//! run made, and which can be stopped to make the registry unreachable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ephem_fixtures::docker::{Origin, RestorePath};
use ephem_fixtures::image_cache::layout::{BlobState, Layout};
use ephem_fixtures::image_cache::{ImageCache, PruneRules, Resolve};
use ephem_fixtures::{DockerBackend, EnvEvent, EphemConfig, ImageRef};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const REGISTRY: &str = "127.0.0.1:5000";
const BASE: &str = "localhost:5000/library/busybox:1.36";

fn random_hex() -> String {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs")
}

/// Images this test pushed to the registry; every name they may have in
/// the daemon is removed on drop, pass or fail.
struct TestImages {
    repo: String,
    dir: tempfile::TempDir,
    /// Extra names (e.g. through the proxy) to remove as well.
    names: std::sync::Mutex<Vec<String>>,
}

impl TestImages {
    /// Builds and pushes `127.0.0.1:5000/ephem-cache-test-<rand>/<name>:1`
    /// for each name, each `busybox:1.36` plus a file of its own (so they
    /// share busybox's layer), and removes them from the daemon.
    fn push(names: &[&str]) -> TestImages {
        let images = TestImages {
            repo: format!("ephem-cache-test-{}", random_hex()),
            dir: tempfile::tempdir().expect("temp dir"),
            names: Default::default(),
        };
        let pulled = docker(&["pull", "-q", BASE]);
        assert!(
            pulled.status.success(),
            "cannot pull {BASE}; run scripts/provision-test-env.sh: {}",
            String::from_utf8_lossy(&pulled.stderr)
        );
        for name in names {
            let context = images.dir.path().join(name);
            std::fs::create_dir_all(&context).expect("build context");
            std::fs::write(context.join("marker"), format!("{}/{name}", images.repo))
                .expect("marker");
            std::fs::write(
                context.join("Dockerfile"),
                format!("FROM {BASE}\nCOPY marker /marker\n"),
            )
            .expect("Dockerfile");
            let tag = images.at(REGISTRY, name);
            images.remember(&tag);
            let built = docker(&["build", "-q", "-t", &tag, &context.to_string_lossy()]);
            assert!(
                built.status.success(),
                "docker build {tag}: {}",
                String::from_utf8_lossy(&built.stderr)
            );
            let pushed = docker(&["push", "-q", &tag]);
            assert!(
                pushed.status.success(),
                "docker push {tag}: {}",
                String::from_utf8_lossy(&pushed.stderr)
            );
            images.remove_local(&tag);
        }
        images
    }

    /// The image's name with `host` as registry.
    fn at(&self, host: &str, name: &str) -> String {
        format!("{host}/{}/{name}:1", self.repo)
    }

    fn remember(&self, name: &str) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_owned());
    }

    fn remove_local(&self, name: &str) {
        let _ = docker(&["rmi", "-f", name]);
    }

    fn present(&self, name: &str) -> bool {
        docker(&["image", "inspect", name]).status.success()
    }
}

impl Drop for TestImages {
    fn drop(&mut self) {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for name in names {
            self.remove_local(&name);
            remove_from_registry(&name);
        }
    }
}

/// Deletes the manifest `name` (`127.0.0.1:5000/<repository>:<tag>`) names
/// from the test registry, so tests leave no image there.
fn remove_from_registry(name: &str) {
    let Some((repository, tag)) = name
        .strip_prefix(&format!("{REGISTRY}/"))
        .and_then(|p| p.rsplit_once(':'))
    else {
        return;
    };
    let url = |r: &str| format!("http://{REGISTRY}/v2/{repository}/manifests/{r}");
    let Ok(head) = Command::new("curl")
        .args(["-sSI", "-H"])
        .arg("Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
        .arg(url(tag))
        .output()
    else {
        return;
    };
    let headers = String::from_utf8_lossy(&head.stdout).into_owned();
    let digest = headers.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.eq_ignore_ascii_case("docker-content-digest")
            .then(|| value.trim().to_owned())
    });
    if let Some(digest) = digest {
        let _ = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-X", "DELETE"])
            .arg(url(&digest))
            .output();
    }
}

/// A loopback TCP proxy to the registry that counts connections; stopped
/// (port closed, open connections cut) by [`stop`](Self::stop) or drop.
struct CountingProxy {
    port: u16,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CountingProxy {
    async fn start() -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            let mut open = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                open.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(REGISTRY).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        CountingProxy {
            port,
            connections,
            task,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    async fn stop(&self) {
        self.task.abort();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(cache: &Path, images: &[String]) -> EphemConfig {
    let mut text = String::new();
    for (i, image) in images.iter().enumerate() {
        text.push_str(&format!(
            "[services.s{i}]\nimage = \"{image}\"\ncmd = [\"sleep\", \"600\"]\n"
        ));
    }
    let mut config = EphemConfig::parse(&text, "ephem.toml").expect("a valid configuration");
    config.images.cache = Some(cache.to_owned());
    config
}

/// Connects a backend over `cache` and makes `images` present; returns
/// where each came from and the events sent meanwhile.
async fn ensure(cache: &Path, images: &[String]) -> (Vec<(String, Origin)>, Vec<EnvEvent>) {
    ensure_by(cache, images, None).await
}

async fn ensure_by(
    cache: &Path,
    images: &[String],
    restore: Option<RestorePath>,
) -> (Vec<(String, Origin)>, Vec<EnvEvent>) {
    ensure_with(cache, images, restore, false).await
}

async fn ensure_with(
    cache: &Path,
    images: &[String],
    restore: Option<RestorePath>,
    decompressed: bool,
) -> (Vec<(String, Origin)>, Vec<EnvEvent>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut backend = DockerBackend::connect(config(cache, images), tx)
        .await
        .expect("a Docker daemon")
        .with_decompressed_layers(decompressed);
    if let Some(restore) = restore {
        backend = backend.with_image_restore(restore);
    }
    let origins = backend
        .ensure_images()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    drop(backend);
    let mut events = Vec::new();
    while let Some(event) = rx.recv().await {
        events.push(event);
    }
    (origins, events)
}

fn notes(events: &[EnvEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            EnvEvent::Note { message } => Some(message.clone()),
            EnvEvent::Warning { message, .. } => Some(format!("warning: {message}")),
            _ => None,
        })
        .collect()
}

fn blob_files(cache: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache.join("blobs/sha256"))
        .expect("blobs folder")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Every blob hashes to its name, and no temporary file is left.
fn assert_cache_verifies(cache: &Path) {
    let layout = Layout::create(cache).expect("cache opens");
    for file in blob_files(cache) {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        assert!(!name.contains(".tmp-"), "temporary file left: {name}");
        assert_eq!(
            layout.verify_blob(&format!("sha256:{name}")),
            BlobState::Good,
            "blob {name} does not match its digest"
        );
    }
    layout.read_index().expect("index.json parses");
}

#[tokio::test(flavor = "multi_thread")]
async fn fills_then_restores_with_zero_registry_requests_and_with_the_registry_gone() {
    let images = TestImages::push(&["a"]);
    let proxy = CountingProxy::start().await;
    let name = images.at(&proxy.host(), "a");
    images.remember(&name);
    let cache = tempfile::tempdir().expect("temp dir");

    let (origins, events) = ensure(cache.path(), std::slice::from_ref(&name)).await;
    assert_eq!(origins, vec![(name.clone(), Origin::Registry)]);
    assert!(
        proxy.connections() > 0,
        "the first fill goes to the registry"
    );
    assert!(
        notes(&events)
            .iter()
            .any(|n| n.contains("fetched") && n.contains("(served)")),
        "{:?}",
        notes(&events)
    );
    assert!(
        images.present(&name),
        "tagged under the configuration's name"
    );
    let index = std::fs::read_to_string(cache.path().join("index.json")).expect("index.json");
    assert!(
        index.contains(&format!(
            "\"org.opencontainers.image.ref.name\": \"{name}\""
        )),
        "{index}"
    );
    assert_eq!(
        std::fs::read_to_string(cache.path().join("oci-layout")).expect("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}"
    );
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", &name]).stdout;

    // Recorded digest, complete cache: not one connection to the registry.
    images.remove_local(&name);
    let before = proxy.connections();
    let (origins, events) = ensure(cache.path(), std::slice::from_ref(&name)).await;
    assert_eq!(origins, vec![(name.clone(), Origin::Cache)]);
    assert_eq!(
        proxy.connections(),
        before,
        "a warm run made registry connections"
    );
    assert!(
        notes(&events)
            .iter()
            .any(|n| n.contains("restored from the image cache") && n.contains("(served)")),
        "{:?}",
        notes(&events)
    );
    let restored = docker(&["image", "inspect", "-f", "{{.Id}}", &name]).stdout;
    assert_eq!(restored, id, "the image id survives the cache");
    let leftovers = docker(&[
        "images",
        "--format",
        "{{.Repository}}",
        "--filter",
        "dangling=false",
    ]);
    let text = String::from_utf8_lossy(&leftovers.stdout).into_owned();
    assert!(
        !text
            .lines()
            .any(|l| l.contains(&images.repo) && !l.starts_with(&proxy.host())),
        "a temporary loopback name was left: {text}"
    );

    // The registry gone entirely: still restored.
    proxy.stop().await;
    images.remove_local(&name);
    let (origins, _) = ensure(cache.path(), std::slice::from_ref(&name)).await;
    assert_eq!(origins, vec![(name.clone(), Origin::Cache)]);
    assert!(images.present(&name));

    // And through `docker load` (what a remote daemon gets).
    images.remove_local(&name);
    let (origins, events) = ensure_by(
        cache.path(),
        std::slice::from_ref(&name),
        Some(RestorePath::Load),
    )
    .await;
    assert_eq!(origins, vec![(name.clone(), Origin::Cache)]);
    assert!(
        notes(&events).iter().any(|n| n.contains("docker load")),
        "{:?}",
        notes(&events)
    );
    let loaded = docker(&["image", "inspect", "-f", "{{.Id}}", &name]).stdout;
    assert_eq!(loaded, id, "docker load keeps the image id");
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_layers_are_stored_once_and_prune_keeps_referenced_images() {
    let images = TestImages::push(&["a", "b"]);
    let a = images.at(REGISTRY, "a");
    let b = images.at(REGISTRY, "b");
    let cache = tempfile::tempdir().expect("temp dir");
    let (tx, _rx) = mpsc::unbounded_channel();
    let store = ImageCache::open(cache.path(), tx).expect("cache opens");
    let mut per_image = Vec::new();
    for name in [&a, &b] {
        let image = ImageRef::parse(name).expect("reference");
        let filled = store
            .fill(&image, None, Resolve::Recorded)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut digests: Vec<String> = store
            .manifest_blobs(&filled.descriptor.digest)
            .expect("manifest")
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        digests.push(filled.descriptor.digest.clone());
        per_image.push(digests);
    }
    let mut union: Vec<String> = per_image.concat();
    union.sort();
    union.dedup();
    let total: usize = per_image.iter().map(Vec::len).sum();
    assert!(union.len() < total, "the images share busybox's layer");
    assert_eq!(
        blob_files(cache.path()).len(),
        union.len(),
        "each blob stored once"
    );
    assert_cache_verifies(cache.path());

    // Prune with only `a` referenced: b's own blobs go, the shared one stays.
    let keep_a = PruneRules {
        keep: vec![a.clone()],
        ..Default::default()
    };
    let (removed, freed) = store.prune(&keep_a).await.expect("prune");
    assert_eq!(removed, vec![b.clone()]);
    assert!(freed > 0);
    let left: Vec<String> = blob_files(cache.path())
        .iter()
        .map(|p| {
            format!(
                "sha256:{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            )
        })
        .collect();
    let mut expected = per_image[0].clone();
    expected.sort();
    assert_eq!(left, expected, "exactly a's blobs remain");
    let refs: Vec<String> = store
        .entries()
        .iter()
        .filter_map(|d| d.reference().map(str::to_owned))
        .collect();
    assert_eq!(refs, vec![a.clone()]);
    assert_cache_verifies(cache.path());

    // --all removes the referenced one too.
    let all = PruneRules {
        all: true,
        ..keep_a
    };
    let (removed, _) = store.prune(&all).await.expect("prune");
    assert_eq!(removed, vec![a]);
    assert!(blob_files(cache.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_blob_is_warned_about_refetched_and_never_served() {
    let images = TestImages::push(&["a"]);
    let proxy = CountingProxy::start().await;
    let name = images.at(&proxy.host(), "a");
    images.remember(&name);
    let cache = tempfile::tempdir().expect("temp dir");
    ensure(cache.path(), std::slice::from_ref(&name)).await;
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", &name]).stdout;

    // Truncate the largest blob (a layer).
    let largest = blob_files(cache.path())
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("blobs");
    let len = std::fs::metadata(&largest).expect("blob").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&largest)
        .expect("blob");
    file.set_len(len / 2).expect("truncate");
    drop(file);

    images.remove_local(&name);
    let before = proxy.connections();
    let (origins, events) = ensure(cache.path(), std::slice::from_ref(&name)).await;
    let warnings: Vec<String> = notes(&events)
        .into_iter()
        .filter(|n| n.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "one line: {warnings:?}");
    assert!(
        warnings[0].contains("does not match its digest"),
        "{warnings:?}"
    );
    assert!(proxy.connections() > before, "the blob was fetched again");
    assert_eq!(origins, vec![(name.clone(), Origin::Registry)]);
    assert_eq!(
        docker(&["image", "inspect", "-f", "{{.Id}}", &name]).stdout,
        id
    );
    assert_eq!(std::fs::metadata(&largest).expect("refetched").len(), len);
    assert_cache_verifies(cache.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unparsable_index_is_discarded_with_a_warning_and_refilled() {
    let images = TestImages::push(&["a"]);
    let name = images.at(REGISTRY, "a");
    let cache = tempfile::tempdir().expect("temp dir");
    ensure(cache.path(), std::slice::from_ref(&name)).await;
    std::fs::write(cache.path().join("index.json"), b"{\"manifests\": [").expect("write");
    images.remove_local(&name);
    let (origins, events) = ensure(cache.path(), std::slice::from_ref(&name)).await;
    assert!(
        notes(&events)
            .iter()
            .any(|n| n.starts_with("warning:") && n.contains("not an OCI index")),
        "{:?}",
        notes(&events)
    );
    // The blobs were still there: only the tag was asked again.
    assert_eq!(origins, vec![(name.clone(), Origin::Registry)]);
    assert!(images.present(&name));
    assert_cache_verifies(cache.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_concurrent_fills_of_one_cache_both_succeed() {
    let images = TestImages::push(&["a", "b"]);
    let names = [images.at(REGISTRY, "a"), images.at(REGISTRY, "b")];
    let cache = tempfile::tempdir().expect("temp dir");
    let fill_all = |dir: PathBuf, names: [String; 2]| async move {
        let (tx, _rx) = mpsc::unbounded_channel();
        let store = ImageCache::open(&dir, tx).expect("cache opens");
        for name in &names {
            let image = ImageRef::parse(name).expect("reference");
            store
                .fill(&image, None, Resolve::Recorded)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    };
    let first = tokio::spawn(fill_all(cache.path().to_owned(), names.clone()));
    let second = tokio::spawn(fill_all(
        cache.path().to_owned(),
        [names[1].clone(), names[0].clone()],
    ));
    first.await.expect("first fill");
    second.await.expect("second fill");
    assert_cache_verifies(cache.path());
    let (tx, _rx) = mpsc::unbounded_channel();
    let store = ImageCache::open(cache.path(), tx).expect("cache opens");
    let mut refs: Vec<String> = store
        .entries()
        .iter()
        .filter_map(|d| d.reference().map(str::to_owned))
        .collect();
    refs.sort();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(refs, expected, "both entries recorded");
}

#[tokio::test(flavor = "multi_thread")]
async fn update_re_resolves_tags_and_falls_back_to_the_cache_when_the_registry_is_gone() {
    let images = TestImages::push(&["a", "b"]);
    let proxy = CountingProxy::start().await;
    let name = images.at(&proxy.host(), "a");
    let cache = tempfile::tempdir().expect("temp dir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let store = ImageCache::open(cache.path(), tx).expect("cache opens");
    let image = ImageRef::parse(&name).expect("reference");
    let first = store
        .fill(&image, None, Resolve::Recorded)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Same tag, nothing changed: same digest.
    let again = store
        .fill(&image, None, Resolve::Fresh)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.descriptor.digest, first.descriptor.digest);

    // The tag moves to b's image: update follows it.
    let b = images.at(REGISTRY, "b");
    let a_in_registry = images.at(REGISTRY, "a");
    let pulled = docker(&["pull", "-q", &b]);
    assert!(pulled.status.success());
    assert!(docker(&["tag", &b, &a_in_registry]).status.success());
    assert!(docker(&["push", "-q", &a_in_registry]).status.success());
    images.remove_local(&a_in_registry);
    images.remove_local(&b);
    let moved = store
        .fill(&image, None, Resolve::Fresh)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(moved.descriptor.digest, first.descriptor.digest);
    // A plain fill now uses the recorded (new) digest without asking.
    let before = proxy.connections();
    let recorded = store
        .fill(&image, None, Resolve::Recorded)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recorded.descriptor.digest, moved.descriptor.digest);
    assert_eq!(proxy.connections(), before);

    // Registry gone: update keeps the cached image, with a one-line note.
    proxy.stop().await;
    while rx.try_recv().is_ok() {}
    let offline = store
        .fill(&image, None, Resolve::Fresh)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(offline.descriptor.digest, moved.descriptor.digest);
    let mut noted = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let EnvEvent::Note { message } = event {
            noted.push(message);
        }
    }
    assert_eq!(noted.len(), 1, "{noted:?}");
    assert!(
        noted[0].contains("registry unreachable") && noted[0].contains("using the cached"),
        "{noted:?}"
    );
}

/// A tiny tmpfs, unmounted on drop: a disk that fills up.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    /// `None` when this process may not mount (not root).
    fn mount(size: &str) -> Option<TinyDisk> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        mounted.then_some(TinyDisk { dir })
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_warned_about_once_and_images_are_pulled_directly() {
    let Some(disk) = TinyDisk::mount("64k") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let images = TestImages::push(&["a", "b"]);
    let names = [images.at(REGISTRY, "a"), images.at(REGISTRY, "b")];
    let cache = disk.dir.path().join("cache");
    let (origins, events) = ensure(&cache, &names).await;
    let mut expected: Vec<(String, Origin)> = names
        .iter()
        .map(|n| (n.clone(), Origin::Registry))
        .collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(origins, expected);
    let warnings: Vec<String> = notes(&events)
        .into_iter()
        .filter(|n| n.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "warned once: {warnings:?}");
    assert!(warnings[0].contains("disk full"), "{warnings:?}");
    for name in &names {
        assert!(images.present(name), "{name} pulled directly");
    }
    let leftovers: Vec<PathBuf> = blob_files(&cache)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_served_decompressed_keep_the_image_id() {
    let images = TestImages::push(&["a"]);
    let name = images.at(REGISTRY, "a");
    let cache = tempfile::tempdir().expect("temp dir");
    ensure(cache.path(), std::slice::from_ref(&name)).await;
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", &name]).stdout;
    images.remove_local(&name);
    // Busybox's layer must be re-registered from the decompressed bytes
    // too, but it is shared with busybox:1.36 in the daemon; the marker
    // layer is this test's own, and so always travels.
    let (origins, events) =
        ensure_with(cache.path(), std::slice::from_ref(&name), None, true).await;
    assert_eq!(origins, vec![(name.clone(), Origin::Cache)]);
    assert!(
        notes(&events)
            .iter()
            .any(|n| n.contains("(served, layers decompressed)")),
        "{:?}",
        notes(&events)
    );
    assert_eq!(
        docker(&["image", "inspect", "-f", "{{.Id}}", &name]).stdout,
        id
    );
    assert_cache_verifies(cache.path());
}
