//! A read-only registry v2 server over the cache, on 127.0.0.1, for the
//! daemon to pull from: layers download in parallel and only the missing
//! ones, which `docker load` cannot do.

use std::convert::Infallible;
use std::net::SocketAddr;

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

use super::layout::{Layout, REF_NAME};

type Body = BoxBody<Bytes, std::io::Error>;

/// The server of one run; stopped on drop.
pub struct RegistryServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RegistryServer {
    /// Listens on an ephemeral loopback port and serves `layout`.
    pub async fn start(layout: Layout) -> std::io::Result<RegistryServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let layout = layout.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let layout = layout.clone();
                        async move { Ok::<_, Infallible>(handle(&layout, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(RegistryServer { addr, task })
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

async fn handle(layout: &Layout, req: Request<Incoming>) -> Response<Body> {
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
        return manifest(layout, name, reference, head).await;
    }
    if let Some((_, digest)) = rest.rsplit_once("/blobs/") {
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
