//! A read-only registry v2 server over the cache, on 127.0.0.1, for the
//! daemon to pull from: layers download in parallel and only the missing
//! ones, which `docker load` cannot do.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::decompress::Decompressed;
use super::layout::{Layout, REF_NAME};

type Body = BoxBody<Bytes, std::io::Error>;

/// The server of one run; stopped on drop.
pub struct RegistryServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
    extras: Arc<Mutex<Extras>>,
}

/// What is served besides the index's manifests: rewritten manifests for
/// decompressed layers, and those layers.
#[derive(Default)]
struct Extras {
    /// Manifest digest to media type.
    manifests: HashMap<String, String>,
    /// Diff id to (stored gzip layer, uncompressed length).
    layers: HashMap<String, (String, u64)>,
}

impl RegistryServer {
    /// Listens on an ephemeral loopback port and serves `layout`.
    pub async fn start(layout: Layout) -> std::io::Result<RegistryServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let extras = Arc::new(Mutex::new(Extras::default()));
        let shared = extras.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let layout = layout.clone();
                let extras = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let layout = layout.clone();
                        let extras = extras.clone();
                        async move { Ok::<_, Infallible>(handle(&layout, &extras, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(RegistryServer { addr, task, extras })
    }

    /// Serves `manifest` and its layers decompressed as well.
    pub fn add_decompressed(&self, manifest: &Decompressed) {
        let mut extras = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        extras
            .manifests
            .insert(manifest.digest.clone(), manifest.media_type.clone());
        extras.layers.extend(manifest.layers.clone());
    }

    /// `127.0.0.1:<port>`, the registry host the daemon pulls from.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(layout: &Layout, extras: &Mutex<Extras>, req: Request<Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return status(StatusCode::METHOD_NOT_ALLOWED, "read-only registry");
    }
    let path = req.uri().path();
    if path == "/v2/" || path == "/v2" {
        return Response::builder()
            .header("Docker-Distribution-API-Version", "registry/2.0")
            .header("Content-Type", "application/json")
            .body(full("{}"))
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, ""));
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return status(StatusCode::NOT_FOUND, "not a registry path");
    };
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        let extra = extras
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .manifests
            .get(reference)
            .cloned();
        if let Some(media_type) = extra {
            return blob(layout, reference, &media_type, head).await;
        }
        return manifest(layout, name, reference, head).await;
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
        let decompressed = extras
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .layers
            .get(digest)
            .cloned();
        if let Some((stored, len)) = decompressed {
            return gunzipped(layout, digest, &stored, len, head);
        }
        return blob(layout, digest, "application/octet-stream", head).await;
    }
    status(StatusCode::NOT_FOUND, "not a registry path")
}

async fn manifest(layout: &Layout, name: &str, reference: &str, head: bool) -> Response<Body> {
    let Ok(index) = layout.read_index() else {
        return status(StatusCode::NOT_FOUND, "no index");
    };
    let found = if reference.starts_with("sha256:") {
        index.manifests.iter().find(|d| d.digest == reference)
    } else {
        // By tag: the entry whose reference is `<name>:<tag>`, Docker Hub's
        // `library/` prefix dropped as the daemon names its images.
        let short = name.strip_prefix("library/").unwrap_or(name);
        index.manifests.iter().find(|d| {
            d.annotations.get(REF_NAME).is_some_and(|r| {
                *r == format!("{name}:{reference}") || *r == format!("{short}:{reference}")
            })
        })
    };
    match found {
        Some(d) => blob(layout, &d.digest.clone(), &d.media_type.clone(), head).await,
        None => status(StatusCode::NOT_FOUND, "manifest unknown"),
    }
}

async fn blob(layout: &Layout, digest: &str, content_type: &str, head: bool) -> Response<Body> {
    let Some(path) = layout.blob_path(digest) else {
        return status(StatusCode::BAD_REQUEST, "malformed digest");
    };
    let Ok(file) = tokio::fs::File::open(&path).await else {
        return status(StatusCode::NOT_FOUND, "blob unknown");
    };
    let Ok(len) = file.metadata().await.map(|m| m.len()) else {
        return status(StatusCode::NOT_FOUND, "blob unknown");
    };
    let builder = Response::builder()
        .header("Content-Type", content_type)
        .header("Content-Length", len)
        .header("Docker-Content-Digest", digest)
        .header("Docker-Distribution-API-Version", "registry/2.0");
    let body = if head {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        // Streamed in chunks: layers can be hundreds of megabytes.
        let reader = stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Frame::data(Bytes::from(buf))), Some(file)))
                }
                // The daemon sees a short body and fails the pull.
                Err(e) => Some((Err(e), None)),
            }
        });
        BodyExt::boxed(StreamBody::new(reader))
    };
    builder
        .body(body)
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, ""))
}

/// A gzip layer served decompressed, as `diff_id` of `len` bytes: gunzip
/// runs on a blocking thread, feeding the body through a channel. The
/// daemon checks the bytes against `diff_id`, and `prepare` already did.
fn gunzipped(layout: &Layout, diff_id: &str, stored: &str, len: u64, head: bool) -> Response<Body> {
    let builder = Response::builder()
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", len)
        .header("Docker-Content-Digest", diff_id)
        .header("Docker-Distribution-API-Version", "registry/2.0");
    if head {
        let body = Empty::new().map_err(|never| match never {}).boxed();
        return builder
            .body(body)
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, ""));
    }
    let reader = match super::decompress::open_gunzip(layout, stored) {
        Ok(reader) => reader,
        Err(_) => return status(StatusCode::NOT_FOUND, "blob unknown"),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut reader = reader;
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Frame::data(Bytes::from(buf)))).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let frames = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    builder
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, ""))
}

fn full(text: &'static str) -> Body {
    Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

fn status(code: StatusCode, message: &'static str) -> Response<Body> {
    let mut response = Response::new(full(message));
    *response.status_mut() = code;
    response
}
