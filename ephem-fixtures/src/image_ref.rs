//! Image references: where an image comes from and how a mirror rewrites it.

use std::fmt;

/// Docker Hub's registry host as it appears in messages.
pub const DOCKER_HUB: &str = "docker.io";

/// An image reference split into registry, repository and tag (or digest).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    original: String,
    /// Registry host (`ghcr.io`, `localhost:5000`), `None` for Docker Hub.
    registry: Option<String>,
    /// Repository path without registry, e.g. `library/postgres` on Docker Hub.
    repository: String,
    /// Tag, `latest` when the reference names neither tag nor digest.
    tag: String,
    /// `sha256:...` when pinned by digest.
    digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference as `docker pull` would; the error says what is wrong.
    pub fn parse(reference: &str) -> Result<ImageRef, String> {
        let original = reference.trim();
        if original.is_empty() {
            return Err("the image reference is empty; write e.g. \"postgres:15-bookworm\"".into());
        }
        if original.contains(char::is_whitespace) || original.contains("://") {
            return Err(format!(
                "{original:?} is not an image reference; write e.g. \"postgres:15-bookworm\" or \"ghcr.io/org/app:1\""
            ));
        }
        let (name, digest) = match original.split_once('@') {
            Some((name, digest)) => (name, Some(digest.to_owned())),
            None => (original, None),
        };
        // The tag separator is a colon in the last path component only;
        // `localhost:5000/app` has a port, not a tag.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_owned()), rest)
            }
            _ => (None, name),
        };
        let registry = registry.filter(|r| !is_docker_hub(r));
        let repository = if registry.is_none() && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let valid_component = |c: &str| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
        };
        if !repository.split('/').all(valid_component) {
            return Err(format!(
                "{original:?}: repository names use lowercase letters, digits and . _ - separated by /"
            ));
        }
        if tag.is_some_and(|t| t.is_empty()) || digest.as_deref().is_some_and(|d| !d.contains(':'))
        {
            return Err(format!(
                "{original:?}: empty tag or malformed digest; write e.g. \"redis:7-bookworm\""
            ));
        }
        Ok(ImageRef {
            original: original.to_owned(),
            registry,
            repository,
            tag: tag.unwrap_or("latest").to_owned(),
            digest,
        })
    }

    /// The reference as written in the configuration.
    pub fn original(&self) -> &str {
        &self.original
    }

    /// Whether the image lives on Docker Hub (and so goes through a mirror).
    pub fn is_docker_hub(&self) -> bool {
        self.registry.is_none()
    }

    /// Registry the image is pulled from without a mirror, e.g. `docker.io`.
    pub fn registry(&self) -> &str {
        self.registry.as_deref().unwrap_or(DOCKER_HUB)
    }

    /// Tag, `latest` when none was written.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Digest, when the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Name without tag or digest, as the daemon stores it locally
    /// (`postgres`, `bitnami/redis`, `ghcr.io/org/app`).
    pub fn local_repository(&self) -> String {
        match &self.registry {
            Some(registry) => format!("{registry}/{}", self.repository),
            None => self
                .repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
                .to_owned(),
        }
    }

    /// The fully specified local name: always with a tag (or digest), so a
    /// pull never fetches every tag of a repository.
    pub fn local_name(&self) -> String {
        self.with_repository(&self.local_repository())
    }

    /// Where to pull from: through `mirror` for Docker Hub images
    /// (`postgres:15` becomes `<mirror>/library/postgres:15`), unchanged otherwise.
    pub fn pull_name(&self, mirror: Option<&str>) -> String {
        match mirror {
            Some(mirror) if self.is_docker_hub() => self.with_repository(&format!(
                "{}/{}",
                mirror.trim_end_matches('/'),
                self.repository
            )),
            _ => self.local_name(),
        }
    }

    /// The repository part of [`pull_name`](Self::pull_name), for the pull API's `fromImage`.
    pub fn pull_repository(&self, mirror: Option<&str>) -> String {
        match mirror {
            Some(mirror) if self.is_docker_hub() => {
                format!("{}/{}", mirror.trim_end_matches('/'), self.repository)
            }
            _ => self.local_repository(),
        }
    }

    fn with_repository(&self, repository: &str) -> String {
        match &self.digest {
            Some(digest) => format!("{repository}@{digest}"),
            None => format!("{repository}:{}", self.tag),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull(reference: &str, mirror: Option<&str>) -> String {
        ImageRef::parse(reference).unwrap().pull_name(mirror)
    }

    #[test]
    fn docker_hub_images_go_through_the_mirror() {
        let m = Some("localhost:5000");
        assert_eq!(
            pull("postgres:15-bookworm", m),
            "localhost:5000/library/postgres:15-bookworm"
        );
        assert_eq!(pull("bitnami/redis:7", m), "localhost:5000/bitnami/redis:7");
        assert_eq!(
            pull("docker.io/library/x:1", m),
            "localhost:5000/library/x:1"
        );
        assert_eq!(
            pull("index.docker.io/foo/bar:2", m),
            "localhost:5000/foo/bar:2"
        );
        assert_eq!(pull("busybox", m), "localhost:5000/library/busybox:latest");
        assert_eq!(
            pull("busybox", Some("mirror.example/hub/")),
            "mirror.example/hub/library/busybox:latest"
        );
    }

    #[test]
    fn other_registries_are_not_rewritten() {
        let m = Some("localhost:5000");
        assert_eq!(pull("ghcr.io/org/app:1", m), "ghcr.io/org/app:1");
        assert_eq!(
            pull("registry.local:5001/app", m),
            "registry.local:5001/app:latest"
        );
        assert_eq!(pull("localhost/app:3", m), "localhost/app:3");
    }

    #[test]
    fn local_names_carry_an_explicit_tag() {
        assert_eq!(
            ImageRef::parse("postgres").unwrap().local_name(),
            "postgres:latest"
        );
        assert_eq!(
            ImageRef::parse("docker.io/library/x:1")
                .unwrap()
                .local_name(),
            "x:1"
        );
        assert_eq!(
            ImageRef::parse("localhost:5000/app").unwrap().local_name(),
            "localhost:5000/app:latest"
        );
        let pinned = ImageRef::parse("redis@sha256:abc").unwrap();
        assert_eq!(pinned.local_name(), "redis@sha256:abc");
        assert_eq!(
            pinned.pull_name(Some("m:1")),
            "m:1/library/redis@sha256:abc"
        );
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "",
            "Postgres:15",
            "http://x/y",
            "a b",
            "redis:",
            "x@nodigest",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
