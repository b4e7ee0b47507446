//! HTTP(S) requests with an idle timeout on every wait: connecting, the
//! response's headers, and each read of its body; bodies are read up to a
//! limit and no further.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::error::{chain, RegistryError};

/// What a request is for, in messages: `manifest 1 of org/app on ghcr.io`.
pub struct Purpose<'a> {
    /// The registry the request is on behalf of (not a storage host).
    pub registry: &'a str,
    /// `blob sha256:... of org/app`, `a pull token for org/app`.
    pub what: &'a str,
    /// The host actually asked, when it is not the registry (a redirect).
    pub via: Option<&'a str>,
}

impl Purpose<'_> {
    fn asked(&self) -> String {
        match self.via {
            Some(via) => format!("{via} (redirected from registry {})", self.registry),
            None => format!("registry {}", self.registry),
        }
    }
}

/// The HTTP client of one cache's fills.
pub struct Transport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    idle: Duration,
    requests: AtomicU64,
}

impl Transport {
    /// A client trusting the system's root certificates, waiting at most
    /// `idle` for any one thing.
    pub fn new(idle: Duration) -> Result<Transport, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(idle));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("cannot load the system's root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Transport {
            client: Client::builder(TokioExecutor::new()).build(https),
            idle,
            requests: AtomicU64::new(0),
        })
    }

    /// The idle timeout.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Sends `request` and waits for the response's headers: connecting
    /// takes at most the idle timeout, and connecting plus the headers at
    /// most twice that (the pooled client does not tell the two apart).
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
        purpose: &Purpose<'_>,
    ) -> Result<Response<Incoming>, RegistryError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.idle * 2, self.client.request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() => Err(RegistryError::Unreachable(format!(
                "cannot reach {} for {}: {}",
                purpose.asked(),
                purpose.what,
                chain(&e)
            ))),
            Ok(Err(e)) => Err(RegistryError::Failed(format!(
                "{} broke off the answer for {}: {}",
                purpose.asked(),
                purpose.what,
                chain(&e)
            ))),
            Err(_) => Err(RegistryError::Stalled(format!(
                "{} sent no answer for {} within {} (the [images] idle-timeout)",
                purpose.asked(),
                purpose.what,
                humantime::format_duration(self.idle)
            ))),
        }
    }

    /// The whole body of a small response (a manifest, a token), at most
    /// `limit` bytes.
    pub async fn read_all(
        &self,
        response: Response<Incoming>,
        limit: u64,
        purpose: &Purpose<'_>,
    ) -> Result<Bytes, RegistryError> {
        let mut body = Body::new(response, limit, self.idle, purpose)?;
        let mut all = BytesMut::new();
        while let Some(chunk) = body.next_chunk(purpose).await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all.freeze())
    }
}

/// A response body read chunk by chunk, each read bounded by the idle
/// timeout and the whole by a byte limit.
pub struct Body {
    body: Incoming,
    idle: Duration,
    limit: u64,
    received: u64,
}

impl Body {
    /// Checks the declared length against `limit` before anything is read.
    pub fn new(
        response: Response<Incoming>,
        limit: u64,
        idle: Duration,
        purpose: &Purpose<'_>,
    ) -> Result<Body, RegistryError> {
        let declared = response
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(declared) = declared.filter(|d| *d > limit) {
            return Err(RegistryError::Failed(format!(
                "{} announced {declared} bytes for {}, more than the {limit} expected; not downloaded",
                purpose.asked(),
                purpose.what
            )));
        }
        Ok(Body {
            body: response.into_body(),
            idle,
            limit,
            received: 0,
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next chunk, `None` at the end; more than the limit is an error
    /// and nothing past it is read.
    pub async fn next_chunk(
        &mut self,
        purpose: &Purpose<'_>,
    ) -> Result<Option<Bytes>, RegistryError> {
        loop {
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => {
                    return Err(RegistryError::Stalled(format!(
                        "{} stalled: nothing for {} while sending {} ({} bytes received; the [images] idle-timeout)",
                        purpose.asked(),
                        humantime::format_duration(self.idle),
                        purpose.what,
                        self.received
                    )))
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(RegistryError::Failed(format!(
                        "{} broke off {} after {} bytes: {}",
                        purpose.asked(),
                        purpose.what,
                        self.received,
                        chain(&e)
                    )))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            self.received += data.len() as u64;
            if self.received > self.limit {
                return Err(RegistryError::Failed(format!(
                    "{} sent more than the {} bytes expected for {}; cut off",
                    purpose.asked(),
                    self.limit,
                    purpose.what
                )));
            }
            return Ok(Some(data));
        }
    }
}
