//! Redirects to storage hosts: `Location` resolved by the URL standard's
//! rules, credentials kept to the registry's own origin, and URLs shown
//! without their query (signed storage URLs carry credentials there).

use url::Url;

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;

/// Where `location` (absolute, scheme-relative `//host/path`, or relative
/// to `base`) points; only http and https are followed.
pub fn resolve(base: &Url, location: &str) -> Result<Url, String> {
    let next = base
        .join(location.trim())
        .map_err(|e| format!("{} redirected to an invalid Location ({e})", shown(base)))?;
    match next.scheme() {
        "http" | "https" => Ok(next),
        other => Err(format!(
            "{} redirected to a {other}: URL; only http and https are followed",
            shown(base)
        )),
    }
}

/// Whether `url` is on `origin` (same scheme, host and port): only then may
/// the registry's credentials be sent with it.
pub fn same_origin(url: &Url, origin: &Url) -> bool {
    url.scheme() == origin.scheme()
        && url.host() == origin.host()
        && url.port_or_known_default() == origin.port_or_known_default()
}

/// `scheme://host[:port]/path` for messages: no user, password, query or
/// fragment.
pub fn shown(url: &Url) -> String {
    let mut text = format!("{}://", url.scheme());
    if let Some(host) = url.host_str() {
        text.push_str(host);
    }
    if let Some(port) = url.port() {
        text.push_str(&format!(":{port}"));
    }
    text.push_str(url.path());
    text
}

/// `host[:port]` of `url`, for messages.
pub fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => shown(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://registry.example:8443/v2/org/app/blobs/sha256:ab").unwrap()
    }

    #[test]
    fn every_location_form_resolves() {
        let cases = [
            (
                "/storage/x?sig=1",
                "https://registry.example:8443/storage/x?sig=1",
            ),
            (
                "storage/x",
                "https://registry.example:8443/v2/org/app/blobs/storage/x",
            ),
            (
                "//cdn.example/x?a=1&b=%2F",
                "https://cdn.example/x?a=1&b=%2F",
            ),
            (
                "http://s3.example/bucket/x?X-Amz-Signature=s",
                "http://s3.example/bucket/x?X-Amz-Signature=s",
            ),
            (
                "?only=query",
                "https://registry.example:8443/v2/org/app/blobs/sha256:ab?only=query",
            ),
        ];
        for (location, expected) in cases {
            assert_eq!(
                resolve(&base(), location).unwrap().as_str(),
                expected,
                "{location}"
            );
        }
        assert!(resolve(&base(), "file:///etc/passwd")
            .unwrap_err()
            .contains("only http and https"));
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let origin = Url::parse("https://registry.example:8443/").unwrap();
        assert!(same_origin(&resolve(&base(), "/x").unwrap(), &origin));
        assert!(!same_origin(
            &Url::parse("https://registry.example/x").unwrap(),
            &origin
        ));
        assert!(!same_origin(
            &Url::parse("http://registry.example:8443/x").unwrap(),
            &origin
        ));
        assert!(!same_origin(
            &Url::parse("https://cdn.example:8443/x").unwrap(),
            &origin
        ));
        let default = Url::parse("https://ghcr.io/").unwrap();
        assert!(same_origin(
            &Url::parse("https://ghcr.io:443/v2/").unwrap(),
            &default
        ));
    }

    #[test]
    fn shown_urls_carry_no_query_or_userinfo() {
        let url =
            Url::parse("https://user:pw@s3.example:9000/b/k?X-Amz-Signature=secret#f").unwrap();
        assert_eq!(shown(&url), "https://s3.example:9000/b/k");
        assert_eq!(host_of(&url), "s3.example:9000");
    }
}
