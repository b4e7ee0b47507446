//! Whether an image pull that failed can still succeed: the kubelet retries
//! every failed pull (ErrImagePull, then ImagePullBackOff with a growing
//! back-off), so only what no retry can fix fails a service at once; a
//! throttled registry (429), a timeout or a registry that is down is waited
//! for until the startup timeout. Read from the kubelet's and the runtime's
//! own words (containerd, CRI-O, Docker Hub's and other registries' errors).

/// What a failed pull means for the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    /// No retry can succeed: why, in a few words.
    Hopeless(&'static str),
    /// A retry may succeed (throttling, a timeout, an outage, or words we do
    /// not know): wait.
    Transient,
    /// The words say nothing about the cause (ImagePullBackOff before
    /// Kubernetes 1.32): look at the kubelet's `Failed to pull image` event.
    Unknown,
}

/// Texts after which no retry helps, with what they mean.
const HOPELESS: [(&str, &str); 9] = [
    ("code = notfound", "it does not exist"),
    (": not found", "it does not exist"),
    ("manifest unknown", "it does not exist"),
    ("name unknown", "it does not exist"),
    ("repository does not exist", "it does not exist"),
    ("invalid reference format", "its reference is not valid"),
    (
        "no matching manifest for",
        "it has no variant for the node's platform",
    ),
    (
        "does not match the specified platform",
        "it has no variant for the node's platform",
    ),
    (
        "signature validation failed",
        "its signature is not accepted",
    ),
];

/// Texts of failures that pass: checked first, so that a throttled
/// registry's page that happens to say `not found` still waits.
const TRANSIENT: [&str; 12] = [
    "toomanyrequests",
    "too many requests",
    "rate limit",
    "rate exceeded",
    "timeout",
    "timed out",
    "deadline exceeded",
    "connection reset",
    "connection refused",
    "503 service unavailable",
    "502 bad gateway",
    "registry is unavailable",
];

/// What a container waiting with `reason` and `message` (its status, or
/// the kubelet's latest `Failed to pull image` event) means; None when the
/// reason is no pull failure.
pub fn judge(reason: &str, message: &str) -> Option<Pull> {
    match reason {
        "InvalidImageName" => Some(Pull::Hopeless("its reference is not valid")),
        "ErrImageNeverPull" => Some(Pull::Hopeless(
            "it is not on the node and imagePullPolicy is Never",
        )),
        "SignatureValidationFailed" => Some(Pull::Hopeless("its signature is not accepted")),
        "RegistryUnavailable" => Some(Pull::Transient),
        "ErrImagePull" | "ImagePullBackOff" => Some(classify(cause(message))),
        _ => None,
    }
}

/// A failed pull's message, as the kubelet or the runtime words it.
pub fn classify(message: &str) -> Pull {
    let text = message.to_ascii_lowercase();
    if text.trim().is_empty() {
        return Pull::Unknown;
    }
    if TRANSIENT.iter().any(|t| text.contains(t)) {
        return Pull::Transient;
    }
    HOPELESS
        .iter()
        .find(|(t, _)| text.contains(t))
        .map_or(Pull::Transient, |(_, why)| Pull::Hopeless(why))
}

/// The error inside a back-off message (`Back-off pulling image "x":
/// ErrImagePull: <error>`, 1.32+); empty when there is none.
fn cause(message: &str) -> &str {
    let Some(rest) = message.strip_prefix("Back-off pulling image \"") else {
        return message;
    };
    match rest.split_once("\": ") {
        Some((_, cause)) => cause.strip_prefix("ErrImagePull: ").unwrap_or(cause),
        None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real texts: kubelet events and container statuses, as containerd,
    /// CRI-O and Docker report registries' answers.
    #[test]
    fn images_that_do_not_exist_are_hopeless() {
        for message in [
            "rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/postgres:15-bookwrm\": failed to resolve reference \"docker.io/library/postgres:15-bookwrm\": docker.io/library/postgres:15-bookwrm: not found",
            "Failed to pull image \"ghcr.io/example/api:9\": failed to pull and unpack image \"ghcr.io/example/api:9\": failed to resolve reference \"ghcr.io/example/api:9\": ghcr.io/example/api:9: not found",
            "rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/library/nosuchimage:1\": failed to resolve reference \"docker.io/library/nosuchimage:1\": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed",
            "rpc error: code = Unknown desc = reading manifest 1.0 in quay.io/example/app: manifest unknown",
            "rpc error: code = Unknown desc = Error response from daemon: manifest for redis:77 not found: manifest unknown: manifest unknown",
            "initializing source docker://registry.example/team/app:1: reading manifest 1 in registry.example/team/app: name unknown: repository name not known to registry",
            "Back-off pulling image \"postgres:99\": ErrImagePull: rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/postgres:99\": docker.io/library/postgres:99: not found",
        ] {
            assert_eq!(
                judge("ErrImagePull", message),
                Some(Pull::Hopeless("it does not exist")),
                "{message}"
            );
        }
        assert_eq!(
            classify("rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/app:1\": no match for platform in manifest: not found"),
            Pull::Hopeless("it does not exist")
        );
        assert_eq!(
            classify("rpc error: code = Unknown desc = no matching manifest for linux/arm64/v8 in the manifest list entries"),
            Pull::Hopeless("it has no variant for the node's platform")
        );
        assert_eq!(
            judge("InvalidImageName", "Failed to apply default image tag \"Postgres:15\": couldn't parse image name \"Postgres:15\": invalid reference format: repository name must be lowercase"),
            Some(Pull::Hopeless("its reference is not valid"))
        );
        assert!(matches!(
            judge("SignatureValidationFailed", "x"),
            Some(Pull::Hopeless(_))
        ));
    }

    #[test]
    fn throttling_timeouts_and_outages_are_waited_for() {
        for message in [
            "rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/library/busybox:latest\": failed to copy: httpReadSeeker: failed open: unexpected status code https://registry-1.docker.io/v2/library/busybox/manifests/sha256:50aa4698fa6262977cff89181b2664b99d8a56dbca847bf62f2ef04854597cf8: 429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit",
            "Error response from daemon: toomanyrequests: You have reached your unauthenticated pull rate limit. https://www.docker.com/increase-rate-limit",
            "rpc error: code = DeadlineExceeded desc = context deadline exceeded",
            "rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/library/redis:7\": failed to resolve reference \"docker.io/library/redis:7\": failed to do request: Head \"https://registry-1.docker.io/v2/library/redis/manifests/7\": dial tcp 44.205.64.79:443: i/o timeout",
            "rpc error: code = Unknown desc = failed to pull and unpack image \"quay.io/a/b:1\": failed to copy: read tcp 10.0.0.5:51234->3.1.2.3:443: read: connection reset by peer",
            "rpc error: code = Unknown desc = Get \"https://registry.example/v2/\": net/http: TLS handshake timeout",
            "rpc error: code = Unknown desc = failed to resolve reference \"mirror.corp:5000/library/postgres:15\": unexpected status from HEAD request to https://mirror.corp:5000/v2/library/postgres/manifests/15: 503 Service Unavailable",
            "image pull failed for postgres:15 because the registry is unavailable: dial tcp: lookup mirror.corp: no such host",
            // Words we do not know: the kubelet retries, so do we.
            "rpc error: code = Unknown desc = failed to pull and unpack image \"registry.example/app:1\": failed to resolve reference \"registry.example/app:1\": unexpected status from HEAD request: 401 Unauthorized",
        ] {
            assert_eq!(judge("ErrImagePull", message), Some(Pull::Transient), "{message}");
        }
        assert_eq!(
            judge("RegistryUnavailable", "anything"),
            Some(Pull::Transient)
        );
    }

    #[test]
    fn a_back_off_without_its_cause_needs_the_event() {
        assert_eq!(
            judge("ImagePullBackOff", "Back-off pulling image \"postgres:15\""),
            Some(Pull::Unknown)
        );
        assert_eq!(
            judge("ImagePullBackOff", "Back-off pulling image \"postgres:15\": ErrImagePull: rpc error: code = DeadlineExceeded desc = context deadline exceeded"),
            Some(Pull::Transient)
        );
        assert_eq!(judge("ErrImagePull", ""), Some(Pull::Unknown));
        assert_eq!(judge("ContainerCreating", ""), None);
    }
}
