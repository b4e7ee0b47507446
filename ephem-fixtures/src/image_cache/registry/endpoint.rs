//! Where an image's manifests and blobs live: a registry host and a
//! repository on it, and the URLs of the v2 API there.

use url::Url;

use crate::image_ref::ImageRef;

/// Docker Hub's registry API host (the daemon's `docker.io`).
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

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
            _ => (DOCKER_HUB_API.to_owned(), docker_hub_path(image)),
        };
        Endpoint { host, repository }
    }

    /// `http` for loopback registries (as the daemon allows), else `https`.
    pub fn scheme(&self) -> &'static str {
        let name = self.host.rsplit_once(':').map_or(&*self.host, |(h, _)| h);
        if name == "localhost" || name.starts_with("127.") || name == "[::1]" {
            "http"
        } else {
            "https"
        }
    }

    /// The registry's origin, `scheme://host[:port]/`: credentials go to
    /// this origin and nowhere else.
    pub fn origin(&self) -> Result<Url, String> {
        Url::parse(&format!("{}://{}/", self.scheme(), self.host))
            .map_err(|e| format!("registry host {:?} is not a valid host: {e}", self.host))
    }

    /// `/v2/<repository>/<kind>/<reference>` on the registry.
    pub fn url(&self, kind: &str, reference: &str) -> Result<Url, String> {
        let mut url = self.origin()?;
        url.set_path(&format!("/v2/{}/{kind}/{reference}", self.repository));
        Ok(url)
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
        assert_eq!(
            e.url("blobs", "sha256:ab").unwrap().as_str(),
            "http://localhost:5000/v2/library/postgres/blobs/sha256:ab"
        );
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
}
