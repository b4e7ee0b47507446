//! The image cache's registry client: manifests and blobs by digest from a
//! v2 registry, with the credentials Docker would use (`auths`, `credsStore`,
//! `credHelpers`), Docker's Basic and token auth, redirects to storage hosts
//! (credentials never follow them), an idle timeout on every wait, and
//! blobs cut off at their descriptor's size. Plain HTTP for loopback
//! registries, HTTPS otherwise.

mod auth;
pub mod credentials;
mod endpoint;
mod error;
pub mod manifest;
pub mod platform;
mod redirect;
mod transport;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use url::Url;

pub use self::credentials::{Credential, CredentialSource};
pub use self::endpoint::Endpoint;
pub use self::error::RegistryError;
pub use self::platform::{Platform, PlatformSource};
use self::redirect::{host_of, same_origin, shown};
use self::transport::{Body, Purpose, Transport};
use crate::{EnvEvent, EventSink};

/// The idle timeout when `[images] idle-timeout` is not set.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the client reaches registries.
#[derive(Clone)]
pub struct RegistrySettings {
    /// The longest wait for any one thing: a connection, a response's
    /// headers, the next bytes of a body, a credential helper.
    pub idle_timeout: Duration,
    /// Whose platform multi-platform images are resolved for.
    pub platform: PlatformSource,
    /// Where credentials come from.
    pub credentials: CredentialSource,
}

impl RegistrySettings {
    /// `idle_timeout`, the local daemon's platform, Docker's credentials
    /// from the environment (`DOCKER_CONFIG`, `HOME`, `PATH`).
    pub fn from_env(idle_timeout: Duration) -> RegistrySettings {
        RegistrySettings {
            idle_timeout,
            platform: PlatformSource::LocalDaemon,
            credentials: CredentialSource::from_env(),
        }
    }
}

/// A manifest as the registry served it.
pub struct Manifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// Its Content-Type (or its own `mediaType` when served as plain JSON).
    pub media_type: String,
    /// `sha256:` of the bytes.
    pub digest: String,
}

/// A registry client shared by all fills of one cache.
pub struct RegistryClient {
    transport: Transport,
    settings: RegistrySettings,
    events: EventSink,
    /// Credentials by registry host, looked up once per run.
    credentials: tokio::sync::Mutex<HashMap<String, Option<Credential>>>,
    /// `Authorization` values by (host, repository).
    authorizations: Mutex<HashMap<(String, String), String>>,
    platform: tokio::sync::OnceCell<Platform>,
}

impl RegistryClient {
    /// A client trusting the system's root certificates; warnings (a
    /// missing credential helper) go to `events`.
    pub fn new(settings: RegistrySettings, events: EventSink) -> Result<RegistryClient, String> {
        Ok(RegistryClient {
            transport: Transport::new(settings.idle_timeout)?,
            settings,
            events,
            credentials: Default::default(),
            authorizations: Default::default(),
            platform: Default::default(),
        })
    }

    /// Requests sent so far.
    pub fn requests(&self) -> u64 {
        self.transport.requests()
    }

    /// The platform multi-platform images are resolved for (asked once).
    pub async fn platform(&self) -> Platform {
        self.platform
            .get_or_init(|| async {
                let (platform, warning) = self.settings.platform.resolve().await;
                if let Some(message) = warning {
                    self.warn(message);
                }
                platform
            })
            .await
            .clone()
    }

    fn warn(&self, message: String) {
        let _ = self.events.send(EnvEvent::Warning {
            shard: None,
            message,
        });
    }

    /// Fetches a manifest by tag or digest (a digest is checked).
    pub async fn manifest(
        &self,
        at: &Endpoint,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let what = format!("manifest {reference} of {}", at.repository);
        let url = at
            .url("manifests", reference)
            .map_err(RegistryError::Failed)?;
        let (response, via) = self.get(at, url, manifest::ACCEPT, &what).await?;
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_default();
        let purpose = Purpose {
            registry: &at.host,
            what: &what,
            via: via.as_deref(),
        };
        let bytes = self
            .transport
            .read_all(response, manifest::MAX_MANIFEST, &purpose)
            .await?;
        let digest = super::layout::digest_of(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(RegistryError::Failed(format!(
                "registry {} sent bytes hashing to {digest} for {what}; not stored",
                at.host
            )));
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            manifest::declared_media_type(&bytes)
        } else {
            media_type
        };
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    /// Starts a blob download of the `size` bytes its descriptor gives; the
    /// caller streams it, hashes it and checks the digest.
    pub async fn blob(
        &self,
        at: &Endpoint,
        digest: &str,
        size: u64,
    ) -> Result<BlobStream, RegistryError> {
        let what = format!("blob {digest} of {}", at.repository);
        let url = at.url("blobs", digest).map_err(RegistryError::Failed)?;
        let (response, via) = self.get(at, url, "*/*", &what).await?;
        let purpose = Purpose {
            registry: &at.host,
            what: &what,
            via: via.as_deref(),
        };
        let body = Body::new(response, size, self.transport.idle(), &purpose)?;
        Ok(BlobStream {
            body,
            registry: at.host.clone(),
            what,
            via,
            size,
        })
    }

    /// GETs `url`, answering one auth challenge and following up to
    /// [`redirect::MAX_REDIRECTS`] redirects; credentials go only to the
    /// registry's own origin. Returns the response and, when it came from
    /// elsewhere, that host.
    async fn get(
        &self,
        at: &Endpoint,
        mut url: Url,
        accept: &str,
        what: &str,
    ) -> Result<(Response<Incoming>, Option<String>), RegistryError> {
        let origin = at.origin().map_err(RegistryError::Failed)?;
        let mut challenged = false;
        let mut redirects = 0;
        loop {
            let on_registry = same_origin(&url, &origin);
            let via = (!on_registry).then(|| host_of(&url));
            let purpose = Purpose {
                registry: &at.host,
                what,
                via: via.as_deref(),
            };
            let mut request = Request::builder()
                .method(Method::GET)
                .uri(url.as_str())
                .header(ACCEPT, accept);
            if on_registry {
                if let Some(value) = self.authorization(at) {
                    request = request.header(AUTHORIZATION, value);
                }
            }
            let request = request.body(Full::new(Bytes::new())).map_err(|e| {
                RegistryError::Failed(format!("bad request to {}: {e}", shown(&url)))
            })?;
            let response = self.transport.send(request, &purpose).await?;
            let status = response.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                redirects += 1;
                if redirects > redirect::MAX_REDIRECTS {
                    return Err(RegistryError::Failed(format!(
                        "registry {} redirected {what} more than {} times (last to {})",
                        at.host,
                        redirect::MAX_REDIRECTS,
                        shown(&url)
                    )));
                }
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        RegistryError::Failed(format!(
                            "{} redirected {what} without a Location",
                            shown(&url)
                        ))
                    })?;
                url = redirect::resolve(&url, location).map_err(RegistryError::Failed)?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && on_registry && !challenged {
                challenged = true;
                let values: Vec<String> = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_owned))
                    .collect();
                if values.is_empty() {
                    return Err(RegistryError::Failed(format!(
                        "registry {} answered 401 for {what} without saying how to authenticate",
                        at.host
                    )));
                }
                self.authenticate(at, &values).await?;
                continue;
            }
            if !status.is_success() {
                return Err(status_error(at, via.as_deref(), status, what, challenged));
            }
            return Ok((response, via));
        }
    }

    fn authorization(&self, at: &Endpoint) -> Option<String> {
        let map = self
            .authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(&(at.host.clone(), at.repository.clone())).cloned()
    }

    /// Answers a challenge and keeps the `Authorization` value for `at`.
    async fn authenticate(&self, at: &Endpoint, values: &[String]) -> Result<(), RegistryError> {
        let challenge = auth::parse(values, at)?;
        let credential = self.credential(&at.host).await;
        let value = auth::answer(&self.transport, &challenge, credential.as_ref(), at).await?;
        self.authorizations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((at.host.clone(), at.repository.clone()), value);
        Ok(())
    }

    /// The credential for `host`, looked up (and a helper run) once.
    async fn credential(&self, host: &str) -> Option<Credential> {
        let mut known = self.credentials.lock().await;
        if let Some(found) = known.get(host) {
            return found.clone();
        }
        let lookup = self
            .settings
            .credentials
            .lookup(host, self.settings.idle_timeout)
            .await;
        if let Some(message) = lookup.warning {
            self.warn(format!("registry {host}: {message}"));
        }
        known.insert(host.to_owned(), lookup.credential.clone());
        lookup.credential
    }
}

fn status_error(
    at: &Endpoint,
    via: Option<&str>,
    status: StatusCode,
    what: &str,
    challenged: bool,
) -> RegistryError {
    let asked = match via {
        Some(via) => format!("{via} (redirected from registry {})", at.host),
        None => format!("registry {}", at.host),
    };
    let hint = match status {
        StatusCode::NOT_FOUND if via.is_none() => "; check the image name and tag",
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if via.is_none() && challenged => {
            "; the credentials were refused: check `docker login`"
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if via.is_none() => {
            "; run `docker login` if the image is private"
        }
        _ => "",
    };
    RegistryError::Failed(format!("{asked} answered {status} for {what}{hint}"))
}

/// A blob being downloaded: each read bounded by the idle timeout, the
/// whole by the descriptor's size.
pub struct BlobStream {
    body: Body,
    registry: String,
    what: String,
    via: Option<String>,
    size: u64,
}

impl BlobStream {
    /// The next bytes, `None` at the end; more bytes than the descriptor
    /// gives, or fewer, is an error.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, RegistryError> {
        let purpose = Purpose {
            registry: &self.registry,
            what: &self.what,
            via: self.via.as_deref(),
        };
        let chunk = self.body.next_chunk(&purpose).await?;
        if chunk.is_none() && self.body.received() < self.size {
            return Err(RegistryError::Failed(format!(
                "registry {} ended {} after {} of its {} bytes",
                self.registry,
                self.what,
                self.body.received(),
                self.size
            )));
        }
        Ok(chunk)
    }
}
