//! Answering a registry's `WWW-Authenticate` challenge: Basic with the
//! credentials, or a Bearer token from the challenge's realm (Docker's token
//! protocol: GET with Basic credentials or none, or an OAuth2 refresh-token
//! POST for identity tokens).

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::Full;
use serde::Deserialize;
use url::Url;

use super::credentials::Credential;
use super::endpoint::Endpoint;
use super::error::RegistryError;
use super::redirect::{host_of, shown};
use super::transport::{Purpose, Transport};

/// Largest token answer read (real ones are a few KiB).
const MAX_TOKEN_ANSWER: u64 = 1 << 20;

/// The client id sent with OAuth2 token requests.
const CLIENT_ID: &str = "cargo-ephem";

/// What a registry asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`: the credentials themselves, on every request.
    Basic,
    /// `Bearer realm="...",service="...",scope="..."`: a token from `realm`.
    Bearer {
        /// The token endpoint (its own query string kept).
        realm: Url,
        /// `service`, passed back to the realm.
        service: Option<String>,
        /// `scope`, which may hold several space-separated scopes, each
        /// with comma-separated actions.
        scope: Option<String>,
    },
}

/// The challenge to answer among the `WWW-Authenticate` values: Bearer
/// when offered, else Basic.
pub fn parse(values: &[String], at: &Endpoint) -> Result<Challenge, RegistryError> {
    let mut basic = false;
    for value in values {
        let challenges = http_auth::parse_challenges(value).map_err(|e| {
            RegistryError::Failed(format!(
                "registry {} sent an unreadable WWW-Authenticate header ({e})",
                at.host
            ))
        })?;
        for challenge in challenges {
            let param = |name: &str| {
                challenge
                    .params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_unescaped())
            };
            if challenge.scheme.eq_ignore_ascii_case("bearer") {
                let realm = param("realm").ok_or_else(|| {
                    RegistryError::Failed(format!(
                        "registry {} asks for a Bearer token but names no realm",
                        at.host
                    ))
                })?;
                let realm = Url::parse(&realm)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| {
                        RegistryError::Failed(format!(
                            "registry {} names a token realm that is not an http(s) URL",
                            at.host
                        ))
                    })?;
                return Ok(Challenge::Bearer {
                    realm,
                    service: param("service"),
                    scope: param("scope"),
                });
            }
            basic |= challenge.scheme.eq_ignore_ascii_case("basic");
        }
    }
    if basic {
        Ok(Challenge::Basic)
    } else {
        Err(RegistryError::Failed(format!(
            "registry {} asks for an authentication scheme other than Basic or Bearer: {:?}",
            at.host,
            values.join(", ")
        )))
    }
}

/// The `Authorization` value that answers `challenge` for pulling from `at`.
pub async fn answer(
    transport: &Transport,
    challenge: &Challenge,
    credential: Option<&Credential>,
    at: &Endpoint,
) -> Result<String, RegistryError> {
    match challenge {
        Challenge::Basic => credential.and_then(Credential::basic).ok_or_else(|| {
            RegistryError::Failed(format!(
                "registry {} asks for a user name and password and none was found for it; run `docker login {}` (or set DOCKER_CONFIG)",
                at.host, at.host
            ))
        }),
        Challenge::Bearer {
            realm,
            service,
            scope,
        } => {
            let scopes = scopes(&at.repository, scope.as_deref());
            let token = token(transport, realm, service.as_deref(), &scopes, credential, at).await?;
            Ok(format!("Bearer {token}"))
        }
    }
}

/// Our pull scope first, then any other scope the challenge named.
fn scopes(repository: &str, challenged: Option<&str>) -> Vec<String> {
    let mut all = vec![format!("repository:{repository}:pull")];
    for scope in challenged.unwrap_or_default().split_whitespace() {
        if !all.iter().any(|s| s == scope) {
            all.push(scope.to_owned());
        }
    }
    all
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

async fn token(
    transport: &Transport,
    realm: &Url,
    service: Option<&str>,
    scopes: &[String],
    credential: Option<&Credential>,
    at: &Endpoint,
) -> Result<String, RegistryError> {
    let realm_host = host_of(realm);
    let what = format!("a pull token for {}", at.repository);
    let purpose = Purpose {
        registry: &at.host,
        what: &what,
        via: Some(&realm_host),
    };
    let request = match credential {
        Some(Credential::IdentityToken(refresh)) => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", refresh)
                .append_pair("client_id", CLIENT_ID)
                .append_pair("scope", &scopes.join(" "));
            if let Some(service) = service {
                form.append_pair("service", service);
            }
            Request::builder()
                .method(Method::POST)
                .uri(realm.as_str())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form.finish())))
        }
        other => {
            let mut url = realm.clone();
            {
                let mut query = url.query_pairs_mut();
                if let Some(service) = service {
                    query.append_pair("service", service);
                }
                for scope in scopes {
                    query.append_pair("scope", scope);
                }
            }
            let mut request = Request::builder().method(Method::GET).uri(url.as_str());
            if let Some(basic) = other.and_then(Credential::basic) {
                request = request.header(AUTHORIZATION, basic);
            }
            request.body(Full::new(Bytes::new()))
        }
    }
    .map_err(|e| RegistryError::Failed(format!("bad token request to {}: {e}", shown(realm))))?;
    let response = transport.send(request, &purpose).await?;
    let status = response.status();
    if !status.is_success() {
        let hint = match credential {
            Some(_) => format!(
                "the credentials found for {} were refused; check `docker login {}`",
                at.host, at.host
            ),
            None => format!(
                "no credentials were found for {}; run `docker login {}` if the image is private",
                at.host, at.host
            ),
        };
        return Err(RegistryError::Failed(format!(
            "token realm {} refused {what} on registry {} ({status}); {hint}",
            shown(realm),
            at.host
        )));
    }
    let body = transport
        .read_all(response, MAX_TOKEN_ANSWER, &purpose)
        .await?;
    let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
        RegistryError::Failed(format!(
            "token realm {} answered something other than a token ({e})",
            shown(realm)
        ))
    })?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| RegistryError::Failed(format!("token realm {} sent no token", shown(realm))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> Endpoint {
        Endpoint {
            host: "r.example".into(),
            repository: "a/b".into(),
        }
    }

    #[test]
    fn quoted_commas_and_realm_queries_survive_parsing() {
        let header = r#"Bearer realm="https://auth.example/token?account=ci&x=1",service="r.example",scope="repository:a/b:pull,push""#;
        let challenge = parse(&[header.to_owned()], &at()).unwrap();
        let Challenge::Bearer {
            realm,
            service,
            scope,
        } = challenge
        else {
            panic!("{challenge:?}");
        };
        assert_eq!(realm.as_str(), "https://auth.example/token?account=ci&x=1");
        assert_eq!(service.as_deref(), Some("r.example"));
        assert_eq!(scope.as_deref(), Some("repository:a/b:pull,push"));
        assert_eq!(
            scopes("a/b", scope.as_deref()),
            vec![
                "repository:a/b:pull".to_owned(),
                "repository:a/b:pull,push".to_owned()
            ]
        );
    }

    #[test]
    fn bearer_is_preferred_and_basic_understood() {
        let both = [
            r#"Basic realm="Registry Realm""#.to_owned(),
            r#"Bearer realm="http://127.0.0.1:1/token""#.to_owned(),
        ];
        assert!(matches!(
            parse(&both, &at()).unwrap(),
            Challenge::Bearer { .. }
        ));
        let basic = [r#"Basic realm="a, b", charset="UTF-8""#.to_owned()];
        assert_eq!(parse(&basic, &at()).unwrap(), Challenge::Basic);
        let err = parse(&[r#"Negotiate"#.to_owned()], &at()).unwrap_err();
        assert!(
            err.message().contains("other than Basic or Bearer"),
            "{err}"
        );
    }
}
