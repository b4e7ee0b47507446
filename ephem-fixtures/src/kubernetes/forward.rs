//! Reaching a pod's ports from outside the cluster: a listener on
//! 127.0.0.1 per port, and for every connection it accepts, a port-forward
//! stream of its own to the pod (one WebSocket each, as kubectl opens one
//! stream per connection), with bytes copied both ways. Listeners and
//! copies stop when their tasks are aborted (teardown).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Portforwarder;
use kube::Api;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

/// How long opening one port-forward stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Once the local side has stopped sending, how long the pod's answer may
/// still take. kube's port-forward has no half-close: ending our sending
/// side would also end the pod's, so the connection stays whole until the
/// pod closes it or this passes.
const HALF_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// After a failed accept, before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Local ports forwarding to one pod, by container port, and the tasks
/// that serve them.
pub(crate) struct Forwards {
    /// Container port to the local port on 127.0.0.1.
    pub ports: HashMap<u16, u16>,
    /// One accept loop per port; aborting one stops its connections too.
    pub tasks: Vec<AbortHandle>,
}

/// Listens on 127.0.0.1 for each of `ports` of pod `pod`.
pub(crate) async fn forward(
    pods: &Api<Pod>,
    pod: &str,
    ports: &[u16],
) -> std::io::Result<Forwards> {
    let mut forwards = Forwards {
        ports: HashMap::new(),
        tasks: Vec::new(),
    };
    for &port in ports {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(e) => {
                forwards.tasks.iter().for_each(AbortHandle::abort);
                return Err(e);
            }
        };
        forwards.ports.insert(port, listener.local_addr()?.port());
        let task = tokio::spawn(accept(listener, pods.clone(), pod.to_owned(), port));
        forwards.tasks.push(task.abort_handle());
    }
    Ok(forwards)
}

/// Accepts connections until aborted; each is served by a task of the
/// loop's own set, so that aborting the loop ends them all.
async fn accept(listener: TcpListener, pods: Api<Pod>, pod: String, port: u16) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((local, _)) = accepted else {
                    // Out of file descriptors, say: try again shortly.
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                };
                let _ = local.set_nodelay(true);
                connections.spawn(serve(pods.clone(), pod.clone(), port, local));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One local connection: a port-forward stream of its own, relayed.
async fn serve(pods: Api<Pod>, pod: String, port: u16, local: TcpStream) {
    let opened = tokio::time::timeout(OPEN_TIMEOUT, pods.portforward(&pod, &[port])).await;
    let Ok(Ok(forwarder)) = opened else {
        // The local client sees the connection close: nothing to relay to.
        return;
    };
    let mut forwarder = Stopped(forwarder);
    let (Some(remote), Some(error)) = (forwarder.0.take_stream(port), forwarder.0.take_error(port))
    else {
        return;
    };
    relay(local, remote, error).await;
}

/// Aborts the port-forward's WebSocket task when the connection is done
/// (dropping a `Portforwarder` alone would leave it running).
struct Stopped(Portforwarder);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies both ways until the pod's side ends, the pod reports an error
/// on the port's error channel, or the local side has stopped sending and
/// the grace period passed.
async fn relay(
    local: TcpStream,
    remote: DuplexStream,
    error: impl Future<Output = Option<String>>,
) {
    let (mut local_read, mut local_write) = local.into_split();
    let (mut remote_read, mut remote_write) = tokio::io::split(remote);
    let up = async {
        let _ = tokio::io::copy(&mut local_read, &mut remote_write).await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut remote_read, &mut local_write).await;
        let _ = local_write.shutdown().await;
    };
    // The error channel also resolves (to None) when the stream ends.
    let failed = async {
        if error.await.is_none() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(up, down, failed);
    tokio::select! {
        _ = &mut down => {}
        _ = &mut failed => {}
        _ = &mut up => {
            let rest = async { tokio::select! { _ = &mut down => {}, _ = &mut failed => {} } };
            let _ = tokio::time::timeout(HALF_CLOSE_GRACE, rest).await;
        }
    }
}
