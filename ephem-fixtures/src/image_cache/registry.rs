//! A minimal registry v2 client: manifests and blobs by digest, with
//! Docker's token and basic auth; plain HTTP for loopback registries, HTTPS
//! otherwise.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::image_ref::ImageRef;

/// Manifest media types asked for, most specific last.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// How long connecting to a registry may take before it counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where an image is fetched from: host, and repository on that host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    /// Repository path on that host (a mirror's path prefix included).
    pub repository: String,
}

impl Endpoint {
    /// The same mapping as [`ImageRef::pull_repository`]: Docker Hub images
    /// through `mirror` when set.
    pub fn of(image: &ImageRef, mirror: Option<&str>) -> Endpoint {
        let full = image.pull_repository(mirror);
        let (host, repository) = match full.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            // Docker Hub without a mirror: `library/postgres`.
            _ => ("registry-1.docker.io".to_owned(), docker_hub_path(image)),
        };
        Endpoint { host, repository }
    }

    fn scheme(&self) -> &'static str {
        let name = self.host.rsplit_once(':').map_or(&*self.host, |(h, _)| h);
        if name == "localhost" || name.starts_with("127.") || name == "[::1]" {
            "http"
        } else {
            "https"
        }
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!(
            "{}://{}/v2/{}/{kind}/{reference}",
            self.scheme(),
            self.host,
            self.repository
        )
    }
}

fn docker_hub_path(image: &ImageRef) -> String {
    let name = image.local_repository();
    if name.contains('/') {
        name
    } else {
        format!("library/{name}")
    }
}

/// A manifest as the registry served it.
pub struct Manifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// Its Content-Type.
    pub media_type: String,
    /// `sha256:` of the bytes.
    pub digest: String,
}

/// A registry client shared by all fills of one cache.
pub struct RegistryClient {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// Bearer tokens by (host, repository).
    tokens: Mutex<HashMap<(String, String), String>>,
    /// Requests made, for messages and tests.
    requests: std::sync::atomic::AtomicU64,
}

impl RegistryClient {
    /// A client trusting the system's root certificates.
    pub fn new() -> Result<RegistryClient, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("cannot load the system's root certificates: {e}"))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(RegistryClient {
            client: Client::builder(TokioExecutor::new()).build(https),
            tokens: Mutex::new(HashMap::new()),
            requests: Default::default(),
        })
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fetches a manifest by tag or digest.
    pub async fn manifest(&self, at: &Endpoint, reference: &str) -> Result<Manifest, String> {
        let response = self
            .send(
                at,
                Method::GET,
                &at.url("manifests", reference),
                MANIFEST_ACCEPT,
            )
            .await?;
        let media_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_default();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("manifest {reference}: {e}"))?
            .to_bytes();
        let digest = super::layout::digest_of(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(format!(
                "manifest {reference}: the registry sent bytes hashing to {digest}"
            ));
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            sniff_media_type(&bytes)
        } else {
            media_type
        };
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Starts a blob download; the caller streams, hashes and checks it.
    pub async fn blob(&self, at: &Endpoint, digest: &str) -> Result<Response<Incoming>, String> {
        self.send(at, Method::GET, &at.url("blobs", digest), "*/*")
            .await
    }

    /// Sends a request, answering one auth challenge and following up to 5
    /// redirects (without credentials to another host).
    async fn send(
        &self,
        at: &Endpoint,
        method: Method,
        url: &str,
        accept: &str,
    ) -> Result<Response<Incoming>, String> {
        let mut url = url.to_owned();
        let mut challenged = false;
        for _ in 0..6 {
            let uri: Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
            let same_host = uri.authority().map(|a| a.as_str()) == Some(at.host.as_str());
            let mut request = Request::builder()
                .method(method.clone())
                .uri(uri)
                .header(ACCEPT, accept);
            if same_host {
                if let Some(auth) = self.authorization(at) {
                    request = request.header(AUTHORIZATION, auth);
                }
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| format!("bad request to {url}: {e}"))?;
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("cannot reach {}: {}", at.host, error_chain(&e)))?;
            let status = response.status();
            if status.is_redirection() {
                let Some(next) = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                else {
                    return Err(format!("{url}: redirect without a Location"));
                };
                url = absolute(&url, next);
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !challenged && same_host {
                challenged = true;
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                self.authenticate(at, &challenge).await?;
                continue;
            }
            if !status.is_success() {
                return Err(format!("{url}: the registry answered {status}"));
            }
            return Ok(response);
        }
        Err(format!("{url}: too many redirects"))
    }

    fn authorization(&self, at: &Endpoint) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(&(at.host.clone(), at.repository.clone()))
            .cloned()
    }

    /// Answers a `WWW-Authenticate` challenge: basic auth with the
    /// credentials of `~/.docker/config.json`, or a bearer token from the
    /// realm (with those credentials when there are any).
    async fn authenticate(&self, at: &Endpoint, challenge: &str) -> Result<(), String> {
        let basic = docker_config_auth(&at.host);
        let value = if challenge.to_ascii_lowercase().starts_with("basic") {
            let auth = basic.ok_or_else(|| {
                format!(
                    "{} asks for credentials; `docker login {}` first",
                    at.host, at.host
                )
            })?;
            format!("Basic {auth}")
        } else {
            let params = challenge_params(challenge);
            let realm = params
                .get("realm")
                .ok_or_else(|| format!("{}: unsupported auth challenge {challenge:?}", at.host))?;
            let mut url = format!("{realm}?scope=repository:{}:pull", at.repository);
            if let Some(service) = params.get("service") {
                url.push_str(&format!("&service={service}"));
            }
            let uri: Uri = url
                .parse()
                .map_err(|e| format!("bad token URL {url}: {e}"))?;
            let mut request = Request::builder().uri(uri);
            if let Some(auth) = &basic {
                request = request.header(AUTHORIZATION, format!("Basic {auth}"));
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| format!("bad token request: {e}"))?;
            self.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("cannot reach {realm}: {}", error_chain(&e)))?;
            if !response.status().is_success() {
                return Err(format!(
                    "{realm} refused a pull token for {} ({}); check `docker login {}`",
                    at.repository,
                    response.status(),
                    at.host
                ));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{realm}: {e}"))?
                .to_bytes();
            let json: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| format!("{realm}: {e}"))?;
            let token = json
                .get("token")
                .or_else(|| json.get("access_token"))
                .and_then(|t| t.as_str())
                .ok_or_else(|| format!("{realm}: no token in the answer"))?;
            format!("Bearer {token}")
        };
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((at.host.clone(), at.repository.clone()), value);
        Ok(())
    }
}

/// Whether `reason` says the registry could not be reached at all (as
/// opposed to answering with an error).
pub fn is_unreachable(reason: &str) -> bool {
    reason.starts_with("cannot reach")
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn absolute(base: &str, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let origin_end = base
        .find("://")
        .and_then(|i| base[i + 3..].find('/').map(|j| i + 3 + j))
        .unwrap_or(base.len());
    format!("{}{location}", &base[..origin_end])
}

fn challenge_params(challenge: &str) -> HashMap<String, String> {
    let rest = challenge.split_once(' ').map_or("", |(_, r)| r);
    let mut params = HashMap::new();
    for part in rest.split(',') {
        if let Some((key, value)) = part.split_once('=') {
            params.insert(
                key.trim().to_ascii_lowercase(),
                value.trim().trim_matches('"').to_owned(),
            );
        }
    }
    params
}

/// The base64 `user:password` of `auths.<host>.auth` in Docker's config
/// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
fn docker_config_auth(host: &str) -> Option<String> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")))?;
    let text = std::fs::read(dir.join("config.json")).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let auths = json.get("auths")?.as_object()?;
    let keys: Vec<String> = if host == "registry-1.docker.io" {
        vec!["https://index.docker.io/v1/".into(), "docker.io".into()]
    } else {
        vec![
            host.to_owned(),
            format!("https://{host}"),
            format!("http://{host}"),
        ]
    };
    keys.iter()
        .find_map(|k| auths.get(k)?.get("auth")?.as_str().map(str::to_owned))
        .filter(|a| !a.is_empty())
}

/// The media type a manifest declares in its own `mediaType` field.
fn sniff_media_type(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_mirror_mapping() {
        let at = |r: &str, m: Option<&str>| Endpoint::of(&ImageRef::parse(r).unwrap(), m);
        let e = at("postgres:15", Some("localhost:5000"));
        assert_eq!(
            (e.host.as_str(), e.repository.as_str()),
            ("localhost:5000", "library/postgres")
        );
        assert_eq!(e.scheme(), "http");
        let e = at("postgres:15", None);
        assert_eq!(
            (e.host.as_str(), e.repository.as_str()),
            ("registry-1.docker.io", "library/postgres")
        );
        assert_eq!(e.scheme(), "https");
        let e = at("ghcr.io/org/app:1", Some("localhost:5000"));
        assert_eq!(
            (e.host.as_str(), e.repository.as_str()),
            ("ghcr.io", "org/app")
        );
        let e = at("redis:7", Some("mirror.example/hub"));
        assert_eq!(
            (e.host.as_str(), e.repository.as_str()),
            ("mirror.example", "hub/library/redis")
        );
    }

    #[test]
    fn challenges_and_redirects_parse() {
        let p = challenge_params(
            "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\"",
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(absolute("http://h:1/v2/x", "/blob/y"), "http://h:1/blob/y");
        assert_eq!(absolute("http://h:1/v2/x", "https://s3/z"), "https://s3/z");
    }
}
