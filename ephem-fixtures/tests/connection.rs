//! A backend that reaches the daemon through a loopback TCP proxy to the
//! Docker socket: `connect_with_host`'s forms, and die events across a broken
//! connection. The proxy never listens beyond loopback.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ephem_fixtures::{DockerBackend, EphemConfig};
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
                    let task = tokio::spawn(forward(client));
                    let mut links = links.lock().unwrap();
                    links.retain(|l| !l.task.is_finished());
                    links.push(Link {
                        task: task.abort_handle(),
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
async fn forward(client: TcpStream) {
    let Ok(daemon) = UnixStream::connect(SOCKET).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut daemon_read, mut daemon_write) = daemon.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = client_read.read(&mut buf).await {
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
