//! The image cache's registry client through the binary, against a loopback
//! proxy in front of the registry on 127.0.0.1:5000 that misbehaves as
//! told: stalls blob downloads (once, or always), or wants Basic
//! credentials. Each request goes over its own connection (the proxy asks
//! the registry for `Connection: close`), so the proxy sees every one.
//!
//! Every run is bounded: a hang fails the test instead of hanging CI.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    config, describe, ephem, ephem_test, fixture_manifest, run_id_of, shared_daemon, Cleanup,
};

const BASE: &str = "localhost:5000/library/busybox:1.36";
const UPSTREAM: &str = "127.0.0.1:5000";
/// A run that takes this long has hung.
const KILL_AFTER: Duration = Duration::from_secs(180);

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI runs")
}

fn random_hex() -> String {
    let mut bytes = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the proxy misbehaves.
#[derive(Clone)]
enum Mode {
    /// The first blob request gets its headers and half its body, then
    /// nothing.
    StallFirstBlob,
    /// Every blob request does.
    StallEveryBlob,
    /// Requests without this `Authorization` value get a Basic challenge.
    RequireBasic(String),
}

/// The proxy; stopped on drop (stalled connections are let go).
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    stalled: Arc<AtomicUsize>,
    authorized: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    fn start(mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let proxy = Proxy {
            port: listener.local_addr().expect("address").port(),
            stop: Arc::new(AtomicBool::new(false)),
            stalled: Default::default(),
            authorized: Default::default(),
            heads: Default::default(),
        };
        let (stop, stalled, authorized, heads) = (
            proxy.stop.clone(),
            proxy.stalled.clone(),
            proxy.authorized.clone(),
            proxy.heads.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (mode, stop, stalled, authorized, heads) = (
                            mode.clone(),
                            stop.clone(),
                            stalled.clone(),
                            authorized.clone(),
                            heads.clone(),
                        );
                        std::thread::spawn(move || {
                            let _ = serve(client, &mode, &stop, &stalled, &authorized, &heads);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        proxy
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    mut client: TcpStream,
    mode: &Mode,
    stop: &AtomicBool,
    stalled: &AtomicUsize,
    authorized: &AtomicUsize,
    heads: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    client.peek(&mut byte)?;
    if byte[0] == 0x16 {
        // The daemon tries TLS first on an insecure registry; answer as a
        // plain HTTP server does, so it falls back to HTTP at once.
        return client.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
    }
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    heads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(text.clone());
    let is_blob_get = text.starts_with("GET ") && text.contains("/blobs/sha256:");
    // Decided and counted in one step: blobs are fetched concurrently, and
    // two first requests at once must not both stall.
    let stall = match mode {
        Mode::StallEveryBlob => {
            if is_blob_get {
                stalled.fetch_add(1, Ordering::SeqCst);
            }
            is_blob_get
        }
        Mode::StallFirstBlob => {
            is_blob_get
                && stalled
                    .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
        }
        Mode::RequireBasic(_) => false,
    };
    let forwarded: String = text
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\r\n"))
        .collect::<String>()
        + "Connection: close\r\n\r\n";
    if stall {
        // The registry's own headers and half its body, then nothing.
        let mut upstream = TcpStream::connect(UPSTREAM)?;
        upstream.write_all(forwarded.as_bytes())?;
        let mut answer = Vec::new();
        upstream.read_to_end(&mut answer)?;
        let body_at = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |i| i + 4);
        client.write_all(&answer[..body_at + (answer.len() - body_at) / 2])?;
        let until = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        return Ok(());
    }
    if let Mode::RequireBasic(expected) = mode {
        let given = text.lines().find_map(|l| {
            l.strip_prefix("Authorization: ")
                .or_else(|| l.strip_prefix("authorization: "))
        });
        if given.map(str::trim) != Some(expected.as_str()) {
            return client.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"proxy\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        authorized.fetch_add(1, Ordering::SeqCst);
    }
    let mut upstream = TcpStream::connect(UPSTREAM)?;
    upstream.write_all(forwarded.as_bytes())?;
    std::io::copy(&mut upstream, &mut client)?;
    Ok(())
}

/// An image of this test in the registry, absent from the daemon; every
/// name of it is removed from the daemon, and its tag from the registry,
/// on drop.
struct TestImage {
    repository: String,
    names: Mutex<Vec<String>>,
}

impl TestImage {
    fn push() -> TestImage {
        let repository = format!("ephem-cache-test-{}/registry", random_hex());
        let image = TestImage {
            repository,
            names: Default::default(),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("marker"), &image.repository).expect("marker");
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!("FROM {BASE}\nCOPY marker /marker\n"),
        )
        .expect("Dockerfile");
        assert!(
            docker(&["pull", "-q", BASE]).status.success(),
            "cannot pull {BASE}; run scripts/provision-test-env.sh"
        );
        let tag = image.at(UPSTREAM);
        let built = docker(&["build", "-q", "-t", &tag, &dir.path().to_string_lossy()]);
        assert!(
            built.status.success(),
            "{}",
            String::from_utf8_lossy(&built.stderr)
        );
        let pushed = docker(&["push", "-q", &tag]);
        assert!(
            pushed.status.success(),
            "{}",
            String::from_utf8_lossy(&pushed.stderr)
        );
        let _ = docker(&["rmi", "-f", &tag]);
        image
    }

    /// Its name through `host`, remembered for removal.
    fn at(&self, host: &str) -> String {
        let name = format!("{host}/{}:1", self.repository);
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        name
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        for name in self.names.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = docker(&["rmi", "-f", name]);
        }
        let _ = delete_from_registry(&self.repository);
    }
}

/// One HTTP/1.0 request to the registry; the answer's text.
fn registry_request(request: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(UPSTREAM)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Deletes the test's tag `1` from the registry (by its manifest digest).
fn delete_from_registry(repository: &str) -> std::io::Result<()> {
    let accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";
    let head = registry_request(&format!(
        "HEAD /v2/{repository}/manifests/1 HTTP/1.0\r\nHost: {UPSTREAM}\r\nAccept: {accept}\r\n\r\n"
    ))?;
    let digest = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("docker-content-digest")
            .then(|| value.trim().to_owned())
    });
    if let Some(digest) = digest {
        registry_request(&format!(
            "DELETE /v2/{repository}/manifests/{digest} HTTP/1.0\r\nHost: {UPSTREAM}\r\n\r\n"
        ))?;
    }
    Ok(())
}

/// `env-busybox.toml` with `image` and `[images] idle-timeout = idle`.
fn config_with(image: &str, dir: &Path, idle: &str) -> PathBuf {
    let text = std::fs::read_to_string(config("env-busybox.toml")).expect("fixture config");
    let text = text
        .replace("image = \"busybox:1.36\"", &format!("image = \"{image}\""))
        .replace(
            "[images]\n",
            &format!("[images]\nidle-timeout = \"{idle}\"\n"),
        );
    assert!(text.contains(image) && text.contains("idle-timeout"));
    let path = dir.join("ephem.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs `cmd`, killing it (and failing) after [`KILL_AFTER`].
fn run_bounded(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cargo-ephem runs");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + KILL_AFTER;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "cargo-ephem hung for {KILL_AFTER:?}: {cmd:?}\n{}",
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn images_pull(config: &Path, cache: &Path) -> Command {
    let mut cmd = ephem();
    cmd.args(["images", "pull", "--manifest-path"])
        .arg(fixture_manifest())
        .arg("--config")
        .arg(config)
        .arg("--image-cache")
        .arg(cache)
        .env_remove("EPHEM_IMAGE_CACHE");
    cmd
}

#[test]
fn a_blob_that_stalls_once_is_warned_about_and_the_daemon_pulls_instead() {
    let _daemon = shared_daemon();
    let image = TestImage::push();
    let proxy = Proxy::start(Mode::StallFirstBlob);
    let name = image.at(&proxy.host());
    let dir = tempfile::tempdir().expect("temp dir");
    // Not 1s: the daemon's own pull, which follows, gets the same bound
    // and must not be cut while a busy machine works.
    let cfg = config_with(&name, dir.path(), "3s");

    let out = run_bounded(&mut images_pull(&cfg, &dir.path().join("cache")));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("registry {name}"),
        "{}",
        describe(&out)
    );
    assert_eq!(proxy.stalled.load(Ordering::SeqCst), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warning = stderr
        .lines()
        .find(|l| l.contains("stalled"))
        .unwrap_or_else(|| panic!("no stall warning: {}", describe(&out)));
    assert!(
        warning.starts_with("warning: image cache ")
            && warning.contains(": registry ")
            && warning.contains(&proxy.host())
            && warning.contains("blob sha256:")
            && warning.contains("nothing for 3s")
            && warning.contains(&format!("pulling {name} directly")),
        "{warning}"
    );
    assert!(
        docker(&["image", "inspect", &name]).status.success(),
        "the daemon pulled it"
    );
}

#[test]
fn a_registry_that_always_stalls_ends_the_run_with_exit_102() {
    let _daemon = shared_daemon();
    let image = TestImage::push();
    let proxy = Proxy::start(Mode::StallEveryBlob);
    let name = image.at(&proxy.host());
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_with(&name, dir.path(), "1s");

    let out = run_bounded(
        ephem_test()
            .arg("--config")
            .arg(&cfg)
            .arg("--image-cache")
            .arg(dir.path().join("cache"))
            .env_remove("EPHEM_IMAGE_CACHE"),
    );
    let _cleanup = Cleanup(run_id_of(&String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(102), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("stalled") && stderr.contains(&proxy.host()),
        "{}",
        describe(&out)
    );
    assert!(
        stderr.contains("no progress for 1s"),
        "the daemon's own pull is given up too: {}",
        describe(&out)
    );
    let daemon_asked = proxy
        .heads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .any(|h| {
            h.contains("/blobs/sha256:") && h.to_ascii_lowercase().contains("user-agent: docker/")
        });
    assert!(
        daemon_asked,
        "the daemon's own pull reached the stalled blob too"
    );
}

/// A `docker-credential-test` helper on a fresh PATH, configured for
/// `host` in a fresh `DOCKER_CONFIG`: (PATH, DOCKER_CONFIG).
fn credential_helper_for(host: &str, dir: &Path) -> (String, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let helper = bin.join("docker-credential-test");
    std::fs::write(
        &helper,
        "#!/bin/sh\n[ \"$1\" = get ] || exit 3\nread server\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"helper-user\",\"Secret\":\"helper-s3cret\"}' \"$server\"\n",
    )
    .expect("helper");
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let docker_config = dir.join("docker");
    std::fs::create_dir(&docker_config).expect("docker config");
    std::fs::write(
        docker_config.join("config.json"),
        format!("{{\"credHelpers\": {{\"{host}\": \"test\"}}}}"),
    )
    .expect("config.json");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (path, docker_config)
}

#[test]
fn credentials_from_a_helper_on_path_reach_a_registry_that_wants_basic_auth() {
    let _daemon = shared_daemon();
    let image = TestImage::push();
    // "helper-user:helper-s3cret"
    let proxy = Proxy::start(Mode::RequireBasic(
        "Basic aGVscGVyLXVzZXI6aGVscGVyLXMzY3JldA==".into(),
    ));
    let name = image.at(&proxy.host());
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_with(&name, dir.path(), "1s");
    let (path, docker_config) = credential_helper_for(&proxy.host(), dir.path());

    let out = run_bounded(
        images_pull(&cfg, &dir.path().join("cache"))
            .env("DOCKER_CONFIG", &docker_config)
            .env("PATH", path),
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("registry {name}"),
        "{}",
        describe(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(served)"),
        "filled through the cache: {}",
        describe(&out)
    );
    assert!(!stderr.contains("warning"), "{}", describe(&out));
    assert!(
        proxy.authorized.load(Ordering::SeqCst) >= 3,
        "manifest and blobs with credentials"
    );
    assert!(!stderr.contains("helper-s3cret"));
}

/// Without an image cache the daemon pulls by itself; it reads no credential
/// store, so cargo-ephem hands it what Docker's CLI would (X-Registry-Auth).
#[test]
fn the_daemons_own_pull_gets_the_credentials_docker_would_use() {
    let _daemon = shared_daemon();
    let image = TestImage::push();
    let proxy = Proxy::start(Mode::RequireBasic(
        "Basic aGVscGVyLXVzZXI6aGVscGVyLXMzY3JldA==".into(),
    ));
    let name = image.at(&proxy.host());
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config_with(&name, dir.path(), "5s");
    let (path, docker_config) = credential_helper_for(&proxy.host(), dir.path());

    let mut cmd = ephem();
    cmd.args(["images", "pull", "--manifest-path"])
        .arg(fixture_manifest())
        .arg("--config")
        .arg(&cfg)
        .env_remove("EPHEM_IMAGE_CACHE")
        .env("DOCKER_CONFIG", &docker_config)
        .env("PATH", path);
    let out = run_bounded(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("registry {name}"),
        "{}",
        describe(&out)
    );
    assert!(
        proxy.authorized.load(Ordering::SeqCst) >= 1,
        "the daemon's requests carried the credentials"
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("helper-s3cret"), "{}", describe(&out));
}
