//! `pods/{name}/portforward` over WebSocket, as the API server and kubelet
//! serve it with subprotocol `v4.channel.k8s.io`: every requested port gets
//! a data channel (2i) and an error channel (2i + 1); each channel's first
//! frame is the port, little-endian; then each binary frame is a channel
//! byte and data. Each connection's stream is relayed to the local TCP
//! address a test set for that pod and port ([`crate::StandIn::forward`]);
//! without one, the error channel says the connection was refused, as the
//! kubelet does when nothing listens in the pod.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::OnUpgrade;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::status::ApiError;
use crate::Shared;

/// The only subprotocol served; kube-rs offers it after `v5.channel.k8s.io`,
/// which the real port-forward does not speak either.
pub const PROTOCOL: &str = "v4.channel.k8s.io";

/// What the upgrade request carried.
pub struct Upgrade {
    /// `Sec-WebSocket-Key`.
    pub key: String,
    /// `Sec-WebSocket-Protocol`, as offered.
    pub protocols: String,
    /// The connection, once the 101 is sent.
    pub on_upgrade: OnUpgrade,
}

/// Answers the upgrade with 101 and relays the ports once it completes.
pub fn accept(
    shared: &Arc<Shared>,
    upgrade: Upgrade,
    ns: &str,
    pod: &str,
    ports: &str,
) -> Result<Response<crate::server::Body>, ApiError> {
    if !upgrade.protocols.split(',').any(|p| p.trim() == PROTOCOL) {
        return Err(ApiError::bad_request(format!(
            "the stand-in's port-forward speaks {PROTOCOL} only (offered: {:?})",
            upgrade.protocols
        )));
    }
    let ports = parse_ports(ports)?;
    let targets: Vec<Option<SocketAddr>> = shared.read(|s| {
        ports
            .iter()
            .map(|port| s.forward_target(ns, pod, *port))
            .collect()
    });
    let pod_uid = shared.read(|s| {
        let pods = crate::resources::by_plural("pods").expect("pods are served");
        s.get(pods, Some(ns), pod)
            .map(|p| p["metadata"]["uid"].as_str().unwrap_or("").to_owned())
    })?;
    let on_upgrade = upgrade.on_upgrade;
    let described = PodPorts {
        pod: pod.to_owned(),
        uid: pod_uid,
        ports,
        targets,
    };
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            relay(ws, described).await;
        }
    });
    let mut response = Response::new(Empty::<Bytes>::new().map_err(|e| match e {}).boxed());
    *response.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        http::header::SEC_WEBSOCKET_ACCEPT,
        http::HeaderValue::from_str(&derive_accept_key(upgrade.key.as_bytes()))
            .expect("base64 is a valid header value"),
    );
    headers.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(PROTOCOL),
    );
    Ok(response)
}

/// `ports=80,1234` (kube-rs sends one comma-separated parameter).
fn parse_ports(text: &str) -> Result<Vec<u16>, ApiError> {
    let ports: Result<Vec<u16>, _> = text
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().parse::<u16>())
        .collect();
    match ports {
        Ok(ports) if !ports.is_empty() && !ports.contains(&0) => Ok(ports),
        _ => Err(ApiError::bad_request(format!(
            "invalid port in {text:?}: ports must be between 1 and 65535"
        ))),
    }
}

struct PodPorts {
    pod: String,
    uid: String,
    ports: Vec<u16>,
    targets: Vec<Option<SocketAddr>>,
}

/// What the per-port readers tell the relay.
enum FromPod {
    Data(u8, Vec<u8>),
    Closed,
}

async fn relay(ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, pod: PodPorts) {
    let (mut sink, mut stream) = ws.split();
    for (i, port) in pod.ports.iter().enumerate() {
        let [lo, hi] = port.to_le_bytes();
        for channel in [2 * i as u8, 2 * i as u8 + 1] {
            if sink.send(binary(channel, &[lo, hi])).await.is_err() {
                return;
            }
        }
    }
    let (tx, mut rx) = mpsc::channel::<FromPod>(16);
    let mut writers: Vec<Option<OwnedWriteHalf>> = Vec::new();
    let mut open = 0;
    for (i, (port, target)) in pod.ports.iter().zip(&pod.targets).enumerate() {
        match connect(*target).await {
            Ok(stream) => {
                let (reader, writer) = stream.into_split();
                writers.push(Some(writer));
                open += 1;
                tokio::spawn(read_pod(reader, 2 * i as u8, tx.clone()));
            }
            Err(why) => {
                writers.push(None);
                let message = format!(
                    "error forwarding port {port} to pod {}, uid : failed to execute portforward in network namespace: failed to connect to localhost:{port} inside namespace \"{}\", IPv4: {why}",
                    pod.uid, pod.pod
                );
                let _ = sink.send(binary(2 * i as u8 + 1, message.as_bytes())).await;
            }
        }
    }
    drop(tx);
    if open > 0 {
        pump(&mut sink, &mut stream, &mut writers, &mut rx).await;
    }
    // The closing handshake: our Close (or the reply to the client's),
    // then whatever the client still sends until it closes.
    let _ = sink.close().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

type Sink =
    futures_util::stream::SplitSink<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, Message>;
type Stream = futures_util::stream::SplitStream<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>;

/// Moves frames both ways until either side ends.
async fn pump(
    sink: &mut Sink,
    stream: &mut Stream,
    writers: &mut [Option<OwnedWriteHalf>],
    rx: &mut mpsc::Receiver<FromPod>,
) {
    loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Binary(frame))) if frame.len() > 1 => {
                    let channel = usize::from(frame[0]);
                    if channel % 2 == 1 {
                        continue;
                    }
                    if let Some(Some(writer)) = writers.get_mut(channel / 2) {
                        if writer.write_all(&frame[1..]).await.is_err() {
                            writers[channel / 2] = None;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            outgoing = rx.recv() => match outgoing {
                Some(FromPod::Data(channel, data)) => {
                    if sink.send(binary(channel, &data)).await.is_err() {
                        break;
                    }
                }
                // The pod's side ended: the kubelet ends the stream.
                Some(FromPod::Closed) | None => break,
            },
        }
    }
}

async fn connect(target: Option<SocketAddr>) -> Result<TcpStream, String> {
    let Some(target) = target else {
        return Err("dial tcp4 127.0.0.1: connect: connection refused".to_owned());
    };
    TcpStream::connect(target)
        .await
        .map_err(|e| format!("dial tcp4 {target}: connect: {e}"))
}

async fn read_pod(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    channel: u8,
    tx: mpsc::Sender<FromPod>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = tx.send(FromPod::Closed).await;
                return;
            }
            Ok(n) => {
                if tx
                    .send(FromPod::Data(channel, buf[..n].to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn binary(channel: u8, data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(channel);
    frame.extend_from_slice(data);
    Message::binary(frame)
}
