//! Which manifest of a multi-platform image to take: the one for the
//! daemon's OS and architecture (as its `info` reports them), not the
//! runner's; a daemon in a VM or on another host may differ from it.

use std::fmt;

use oci_spec::image::ImageIndex;

/// An OS, architecture and variant, in the names of image indexes (Go's
/// `GOOS`/`GOARCH`: `linux`, `amd64`, `arm64`, `arm` + `v7`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `windows`.
    pub os: String,
    /// `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`.
    pub architecture: String,
    /// `v8` for arm64, `v5`-`v7` for arm; `None` where it does not matter.
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// From a daemon's `OSType` and `Architecture`; the latter is `uname -m`
    /// for Docker (`x86_64`, `aarch64`, `armv7l`) and already Go's name for
    /// Podman (`amd64`, `arm64`).
    pub fn of_daemon(os_type: &str, architecture: &str) -> Platform {
        let os = match os_type.trim().to_ascii_lowercase().as_str() {
            "" => "linux".to_owned(),
            other => other.to_owned(),
        };
        let (architecture, variant) = go_arch(architecture.trim());
        Platform {
            os,
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Linux on the runner's own architecture: the guess when no daemon
    /// answers.
    pub fn of_runner() -> Platform {
        Platform::of_daemon("linux", std::env::consts::ARCH)
    }

    /// How well an index entry's platform fits: `None` when it cannot run
    /// here, higher is better.
    fn fit(&self, os: &str, architecture: &str, variant: Option<&str>) -> Option<u8> {
        if os != self.os || architecture != self.architecture {
            return None;
        }
        let wanted = self.variant.as_deref();
        let (have, want) = (normal(architecture, variant), normal(architecture, wanted));
        if have == want {
            return Some(EXACT);
        }
        match (architecture, arm_level(have), arm_level(want)) {
            // An armv7 daemon runs v6 and v5 images (newer fits better).
            ("arm", Some(have), Some(want)) if have < want => Some(have),
            _ => None,
        }
    }
}

/// The fit of an exact match; compatible older arm variants score their
/// level (5, 6), below it.
const EXACT: u8 = 100;

/// A variant as compared: arm64's only one in practice is `v8`, which
/// indexes write or not; amd64's baseline level `v1` is no variant.
fn normal<'a>(architecture: &str, variant: Option<&'a str>) -> Option<&'a str> {
    match (architecture, variant) {
        ("arm64", None) => Some("v8"),
        ("amd64", Some("v1")) => None,
        (_, v) => v,
    }
}

/// `uname -m` (or Go's name) to Go's architecture and variant.
fn go_arch(machine: &str) -> (&str, Option<&str>) {
    match machine {
        "x86_64" | "amd64" => ("amd64", None),
        "aarch64" | "arm64" | "armv8" | "armv8l" => ("arm64", Some("v8")),
        "armv7l" | "armv7" | "armhf" => ("arm", Some("v7")),
        "armv6l" | "armv6" => ("arm", Some("v6")),
        "armv5tel" | "armv5tejl" | "armv5" | "armel" => ("arm", Some("v5")),
        "arm" => ("arm", None),
        "i386" | "i486" | "i586" | "i686" | "386" => ("386", None),
        "ppc64le" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        "mips64" => ("mips64", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    }
}

fn arm_level(variant: Option<&str>) -> Option<u8> {
    variant?.strip_prefix('v')?.parse().ok()
}

/// Where the daemon's platform comes from.
#[derive(Clone)]
pub enum PlatformSource {
    /// This daemon's `info`, asked once when first needed.
    Daemon(bollard::Docker),
    /// The daemon `DOCKER_HOST` (or the default socket) names, when one
    /// answers (`cargo ephem images update`, which needs no daemon otherwise).
    LocalDaemon,
    /// Given by the caller.
    Fixed(Platform),
}

impl PlatformSource {
    /// The platform, or the runner's with a one-line reason when no daemon
    /// could say.
    pub async fn resolve(&self) -> (Platform, Option<String>) {
        let docker = match self {
            PlatformSource::Fixed(platform) => return (platform.clone(), None),
            PlatformSource::Daemon(docker) => docker.clone(),
            PlatformSource::LocalDaemon => match crate::docker::connect::connect().await {
                Ok(connection) => connection.docker,
                Err(e) => return guess(format!("no daemon to ask its platform ({e})")),
            },
        };
        match docker.info().await {
            Ok(info) => {
                let architecture = info.architecture.unwrap_or_default();
                if architecture.is_empty() {
                    return guess("the daemon's info names no architecture".to_owned());
                }
                let os = info.os_type.unwrap_or_default();
                (Platform::of_daemon(&os, &architecture), None)
            }
            Err(e) => guess(format!("the daemon did not say its platform ({e})")),
        }
    }
}

fn guess(reason: String) -> (Platform, Option<String>) {
    let runner = Platform::of_runner();
    let message = format!("{reason}; choosing {runner} manifests of multi-platform images");
    (runner, Some(message))
}

/// One manifest of an index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// Its digest.
    pub digest: String,
    /// Its size in the index.
    pub size: u64,
}

/// The manifest of `index` (an OCI index or Docker manifest list, as
/// served) for `platform`: an exact variant before a compatible older one,
/// else the first in the index's order. The error lists what it offers.
pub fn choose(index: &[u8], platform: &Platform) -> Result<Chosen, String> {
    let index: ImageIndex = serde_json::from_slice(index)
        .map_err(|e| format!("the registry's index does not parse as an image index ({e})"))?;
    let mut best: Option<(u8, Chosen)> = None;
    let mut offered = Vec::new();
    for entry in index.manifests() {
        let Some(p) = entry.platform() else { continue };
        let (os, arch) = (p.os().to_string(), p.architecture().to_string());
        if os == "unknown" || arch == "unknown" {
            continue; // attestations
        }
        let variant = p.variant().as_deref().filter(|v| !v.is_empty());
        offered.push(match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
        if let Some(score) = platform.fit(&os, &arch, variant) {
            if best.as_ref().is_none_or(|(s, _)| score > *s) {
                let chosen = Chosen {
                    digest: entry.digest().to_string(),
                    size: entry.size(),
                };
                best = Some((score, chosen));
            }
        }
    }
    best.map(|(_, chosen)| chosen).ok_or_else(|| {
        format!(
            "the registry's index has no manifest for the daemon's platform {platform} (it offers {})",
            if offered.is_empty() { "none".to_owned() } else { offered.join(", ") }
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Vec<u8> {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let entry = |c: char, platform: serde_json::Value| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": d(c), "size": 100 + c as u64, "platform": platform,
            })
        };
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                entry('0', serde_json::json!({"os": "unknown", "architecture": "unknown"})),
                entry('1', serde_json::json!({"os": "windows", "architecture": "amd64"})),
                entry('2', serde_json::json!({"os": "linux", "architecture": "amd64"})),
                entry('3', serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v6"})),
                entry('4', serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"})),
                entry('5', serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"})),
                entry('6', serde_json::json!({"os": "linux", "architecture": "s390x"})),
            ],
        })
        .to_string()
        .into_bytes()
    }

    fn pick(os: &str, arch: &str) -> Result<char, String> {
        let chosen = choose(&index(), &Platform::of_daemon(os, arch))?;
        Ok(chosen.digest.chars().last().unwrap())
    }

    #[test]
    fn the_daemons_platform_picks_the_manifest() {
        assert_eq!(pick("linux", "x86_64"), Ok('2'));
        assert_eq!(pick("linux", "aarch64"), Ok('5'));
        assert_eq!(pick("linux", "arm64"), Ok('5'));
        assert_eq!(pick("linux", "armv7l"), Ok('4'));
        assert_eq!(pick("linux", "armv6l"), Ok('3'));
        assert_eq!(pick("linux", "s390x"), Ok('6'));
        assert_eq!(pick("windows", "x86_64"), Ok('1'));
        let err = pick("linux", "armv5tel").unwrap_err();
        assert!(
            err.contains("linux/arm/v5") && err.contains("linux/arm64/v8"),
            "{err}"
        );
        assert!(!err.contains("unknown"), "{err}");
    }

    #[test]
    fn arm64_entries_without_a_variant_fit_and_older_arm_fits_newer() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
            "manifests": [
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                 "digest": d('a'), "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                 "digest": d('b'), "size": 1, "platform": {"os": "linux", "architecture": "arm", "variant": "v5"}},
            ],
        })
        .to_string();
        let on =
            |arch| choose(index.as_bytes(), &Platform::of_daemon("linux", arch)).map(|c| c.digest);
        assert_eq!(on("aarch64"), Ok(d('a')));
        assert_eq!(on("armv7l"), Ok(d('b')));
        assert!(on("x86_64").is_err());
        assert_eq!(
            Platform::of_daemon("linux", "aarch64").to_string(),
            "linux/arm64/v8"
        );
    }
}
