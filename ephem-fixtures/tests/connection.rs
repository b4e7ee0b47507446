//! A backend that reaches the daemon through a loopback TCP proxy to the
//! Docker socket: `connect_with_host`'s forms, and die events across a broken
//! connection. The proxy never listens beyond loopback.

mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bollard::query_parameters::KillContainerOptions;
use bollard::Docker;
use ephem_fixtures::{Backend, DockerBackend, EnvEvent, EphemConfig, RunContext, ShardContext};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};

const SOCKET: &str = "/var/run/docker.sock";

/// A TCP proxy on loopback to the Docker socket, whose connections a test can cut.
struct Proxy {
    port: u16,
    host: String,
    accept: JoinHandle<()>,
    links: Arc<Mutex<Vec<Link>>>,
}

/// One proxied connection.
struct Link {
    task: AbortHandle,
    /// Its request is `GET /.../events`: a follower's event stream.
    events: Arc<AtomicBool>,
}

impl Proxy {
    /// Listens on `bind` (a loopback address with port 0).
    async fn start(bind: &str) -> Proxy {
        let listener = TcpListener::bind(bind).await.expect("bind the proxy");
        let address = listener.local_addr().unwrap();
        assert!(address.ip().is_loopback(), "{address} is not loopback");
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let accept = tokio::spawn({
            let links = links.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let events = Arc::new(AtomicBool::new(false));
                    let task = tokio::spawn(forward(client, events.clone()));
                    let mut links = links.lock().unwrap();
                    links.retain(|l| !l.task.is_finished());
                    links.push(Link {
                        task: task.abort_handle(),
                        events,
                    });
                }
            }
        });
        Proxy {
            port: address.port(),
            host: match address {
                std::net::SocketAddr::V4(a) => a.ip().to_string(),
                std::net::SocketAddr::V6(a) => format!("[{}]", a.ip()),
            },
            accept,
            links,
        }
    }

    /// `tcp://HOST:PORT`, for `connect_with_host`.
    fn url(&self) -> String {
        format!("tcp://{}:{}", self.host, self.port)
    }

    /// Event streams open through the proxy now.
    fn event_streams(&self) -> usize {
        let links = self.links.lock().unwrap();
        links
            .iter()
            .filter(|l| !l.task.is_finished() && l.events.load(Ordering::SeqCst))
            .count()
    }

    /// Waits until exactly one event stream is open, for at most 10 s.
    async fn until_one_event_stream(&self) {
        for _ in 0..100 {
            if self.event_streams() == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} event streams open, not 1", self.event_streams());
    }

    /// Drops every open connection; later ones are proxied again.
    fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.task.abort();
        }
    }

    /// Stops listening and drops every connection: the address refuses from now on.
    fn stop(&self) {
        self.accept.abort();
        self.cut();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies bytes both ways between `client` and the Docker socket.
async fn forward(client: TcpStream, events: Arc<AtomicBool>) {
    let Ok(daemon) = UnixStream::connect(SOCKET).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut daemon_read, mut daemon_write) = daemon.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut first = true;
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
            if std::mem::take(&mut first) {
                let line = String::from_utf8_lossy(&buf[..n]);
                let line = line.lines().next().unwrap_or("");
                events.store(
                    line.starts_with("GET ") && line.contains("/events"),
                    Ordering::SeqCst,
                );
            }
            if daemon_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = daemon_write.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut daemon_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

fn config() -> EphemConfig {
    let text = format!(
        r#"
[images]
mirror = "{}"

[services.a]
image = "busybox:1.36"
cmd = ["sleep", "300"]

[services.b]
image = "busybox:1.36"
cmd = ["sleep", "300"]
"#,
        common::MIRROR
    );
    EphemConfig::parse(&text, "connection.toml").unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn connect_with_host_takes_a_bare_socket_path() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let backend = DockerBackend::connect_with_host(config(), tx, SOCKET)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backend.address(), SOCKET);
    assert_eq!(backend.host(), "127.0.0.1");
    backend.client().ping().await.expect("ping");
}

#[tokio::test]
async fn connect_with_host_over_tcp_takes_the_host_for_published_ports() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let proxy = Proxy::start(bind).await;
        let (tx, _rx) = mpsc::unbounded_channel();
        let backend = DockerBackend::connect_with_host(config(), tx, &proxy.url())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(backend.address(), proxy.url());
        let host = proxy.host.trim_start_matches('[').trim_end_matches(']');
        assert_eq!(backend.host(), host);
        backend
            .client()
            .ping()
            .await
            .expect("ping through the proxy");
    }
}

#[tokio::test]
async fn connect_with_host_names_the_address_when_nothing_answers() {
    let proxy = Proxy::start("127.0.0.1:0").await;
    let url = proxy.url();
    proxy.stop();
    let (tx, _rx) = mpsc::unbounded_channel();
    let started = std::time::Instant::now();
    let err = match DockerBackend::connect_with_host(config(), tx, &url).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("connected to a stopped proxy at {url}"),
    };
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(err.contains(&url), "{err}");
    assert!(
        err.contains("check that the daemon listens at that address"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}

/// A shard provisioned through the proxy, and the daemon reached directly.
struct Case {
    backend: DockerBackend,
    shard: ShardContext,
    events: mpsc::UnboundedReceiver<EnvEvent>,
    direct: Docker,
}

impl Case {
    /// Provisions shard 1 through the proxy.
    async fn up(&self) {
        self.backend
            .prepare(&self.shard.run)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        self.backend
            .provision(&self.shard)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `docker kill` of `service`, over the socket itself.
    async fn kill(&self, service: &str) {
        let name = common::container_name(&self.shard.run, self.shard.shard, service);
        self.direct
            .kill_container(&name, None::<KillContainerOptions>)
            .await
            .unwrap_or_else(|e| panic!("kill {name}: {e}"));
    }

    /// The next event other than image progress, if one comes `within`.
    async fn next_event(&mut self, within: Duration) -> Option<EnvEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(EnvEvent::PullProgress { .. } | EnvEvent::ImageReady { .. })) => continue,
                Ok(event) => return event,
                Err(_) => return None,
            }
        }
    }

    /// The service and exit code of the next event, which must be a `ServiceExited`.
    async fn next_exit(&mut self, within: Duration) -> (String, Option<i64>) {
        match self.next_event(within).await {
            Some(EnvEvent::ServiceExited {
                shard,
                service,
                exit_code,
                ..
            }) => {
                assert_eq!(shard, 1);
                (service, exit_code)
            }
            other => panic!("expected a service exit within {within:?}, got {other:?}"),
        }
    }
}

/// Connects a backend through `proxy` (with `retry` delays if given), runs
/// `body`, then always tears the shard down over the socket itself (the
/// proxy may be gone) and checks that nothing of the run is left, before
/// re-raising a panic of `body`.
async fn through_proxy<F, Fut>(test: &str, proxy: &Proxy, retry: Option<Vec<Duration>>, body: F)
where
    F: FnOnce(Case) -> Fut,
    Fut: Future<Output = ()>,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let mut backend = DockerBackend::connect_with_host(config(), tx, &proxy.url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(delays) = retry {
        backend = backend.with_event_retry(delays);
    }
    let (direct_tx, _direct_rx) = mpsc::unbounded_channel();
    let direct = DockerBackend::connect_with_host(config(), direct_tx, SOCKET)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let shard = ShardContext {
        run: RunContext {
            run_id: common::unique_run_id(test),
            shard_count: 1,
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        },
        shard: 1,
    };
    let case = Case {
        backend,
        shard: shard.clone(),
        events: rx,
        direct: direct.client().clone(),
    };
    let outcome = AssertUnwindSafe(body(case)).catch_unwind().await;
    let teardown = direct.teardown(&shard).await;
    let leftovers = common::leftovers(direct.client(), &shard.run.run_id).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    teardown.unwrap_or_else(|e| panic!("teardown: {e}"));
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// A die event before the break, the break, a die event while the follower
/// is away: the second arrives after it reconnects, and neither twice.
#[tokio::test]
async fn die_events_survive_a_broken_event_stream() {
    let proxy = &Proxy::start("127.0.0.1:0").await;
    through_proxy("events-cut", proxy, None, |mut case| async move {
        case.up().await;
        proxy.until_one_event_stream().await;
        case.kill("a").await;
        assert_eq!(
            case.next_exit(Duration::from_secs(10)).await,
            ("a".to_owned(), Some(137))
        );

        proxy.cut();
        assert_eq!(proxy.event_streams(), 0);
        // The follower waits 1 s before its first reconnect: b dies meanwhile.
        case.kill("b").await;
        assert_eq!(
            case.next_exit(Duration::from_secs(15)).await,
            ("b".to_owned(), Some(137))
        );
        proxy.until_one_event_stream().await;
        // Resuming from a's event replays it; it must not be reported again.
        let extra = case.next_event(Duration::from_secs(2)).await;
        assert!(extra.is_none(), "unexpected {extra:?}");
    })
    .await;
}

/// When the daemon stays out of reach, the follower gives up with a warning.
#[tokio::test]
async fn a_lost_event_stream_ends_in_a_warning() {
    let proxy = &Proxy::start("127.0.0.1:0").await;
    let retry = vec![Duration::from_millis(100); 3];
    through_proxy("events-lost", proxy, Some(retry), |mut case| async move {
        case.up().await;
        proxy.until_one_event_stream().await;
        proxy.stop();
        match case.next_event(Duration::from_secs(10)).await {
            Some(EnvEvent::Warning { shard, message }) => {
                assert_eq!(shard, Some(1));
                assert!(message.contains("service deaths"), "{message}");
                assert!(message.contains("no longer reported"), "{message}");
                assert!(message.contains("Connection refused"), "{message}");
                assert!(!message.contains('\n'), "{message}");
            }
            other => panic!("expected a warning, got {other:?}"),
        }
        assert!(case.next_event(Duration::from_secs(1)).await.is_none());
    })
    .await;
}
