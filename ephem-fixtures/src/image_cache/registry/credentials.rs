//! Registry credentials where Docker finds them: `$DOCKER_CONFIG/config.json`
//! (else `~/.docker/config.json`), its `credHelpers` for the host, else its
//! `credsStore`, both through the `docker-credential-<name> get` protocol,
//! else its `auths` entry (`auth`, `username`/`password`, `identitytoken`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use super::endpoint::DOCKER_HUB_API;

/// The key Docker files Docker Hub's credentials under.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// What a registry accepts as proof: never shown (see the `Debug` impl).
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (or access token used as one).
    Password {
        /// The user name.
        username: String,
        /// The password or token.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`; a helper's `<token>` user),
    /// exchanged at the token realm.
    IdentityToken(String),
}

impl Credential {
    /// `Basic <base64 user:password>`, for password credentials.
    pub fn basic(&self) -> Option<String> {
        match self {
            Credential::Password { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credential::IdentityToken(_) => None,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Password { username, .. } => {
                write!(f, "Password {{ username: {username:?}, password: *** }}")
            }
            Credential::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

/// Where to look: Docker's configuration folder and the `PATH` helpers are
/// found on (read from the environment once; tests give their own).
#[derive(Clone, Debug, Default)]
pub struct CredentialSource {
    /// The folder of `config.json`; `None`: no configuration.
    pub config_dir: Option<PathBuf>,
    /// The search path for `docker-credential-*`.
    pub path: Option<OsString>,
}

impl CredentialSource {
    /// `DOCKER_CONFIG`, else `$HOME/.docker`; and `PATH`.
    pub fn from_env() -> CredentialSource {
        let config_dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")));
        CredentialSource {
            config_dir,
            path: std::env::var_os("PATH"),
        }
    }

    /// The credential for registry `host`, and a warning when one was
    /// configured but could not be had (the caller then tries anonymously).
    pub async fn lookup(&self, host: &str, deadline: Duration) -> Lookup {
        let Some(dir) = &self.config_dir else {
            return Lookup::default();
        };
        let file = dir.join("config.json");
        let text = match std::fs::read(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::default(),
            Err(e) => return Lookup::warn(format!("cannot read {}: {e}", file.display())),
        };
        let config: ConfigFile = match serde_json::from_slice(&text) {
            Ok(config) => config,
            Err(e) => {
                return Lookup::warn(format!(
                    "{} is not valid JSON ({e}); no credentials taken from it",
                    file.display()
                ))
            }
        };
        let key = server_key(host);
        let helper = config
            .cred_helpers
            .get(&key)
            .map(|name| (name, "credHelpers"))
            .or_else(|| config.creds_store.as_ref().map(|name| (name, "credsStore")));
        match helper {
            Some((name, field)) if !name.is_empty() => {
                self.ask_helper(name, field, &key, &file, deadline).await
            }
            _ => Lookup {
                credential: config.auth_for(&key).and_then(AuthEntry::credential),
                warning: None,
            },
        }
    }

    /// Runs `docker-credential-<name> get` with the server on stdin.
    async fn ask_helper(
        &self,
        name: &str,
        field: &str,
        key: &str,
        file: &Path,
        deadline: Duration,
    ) -> Lookup {
        let program = format!("docker-credential-{name}");
        let Some(executable) = self.find(&program) else {
            return Lookup::warn(format!(
                "credential helper {program} ({field} in {}) is not on PATH; trying {key} without credentials",
                file.display()
            ));
        };
        let run = async {
            let mut command = tokio::process::Command::new(&executable);
            command
                .arg("get")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if let Some(path) = &self.path {
                command.env("PATH", path);
            }
            let mut child = command.spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(key.as_bytes()).await?;
            }
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(deadline, run).await {
            Err(_) => {
                return Lookup::warn(format!(
                    "credential helper {program} did not answer within {} (the [images] idle-timeout); trying {key} without credentials",
                    humantime::format_duration(deadline)
                ))
            }
            Ok(Err(e)) => {
                return Lookup::warn(format!(
                    "credential helper {program} could not be run ({e}); trying {key} without credentials"
                ))
            }
            Ok(Ok(output)) => output,
        };
        if !output.status.success() {
            let said = first_line(&output.stdout, &output.stderr);
            // "credentials not found in native keychain": nothing stored, as
            // for a registry one never logged in to.
            if said.to_ascii_lowercase().contains("not found") {
                return Lookup::default();
            }
            return Lookup::warn(format!(
                "credential helper {program} failed ({}: {said}); trying {key} without credentials",
                output.status
            ));
        }
        match serde_json::from_slice::<HelperAnswer>(&output.stdout) {
            Ok(answer) => Lookup {
                credential: answer.credential(),
                warning: None,
            },
            Err(e) => Lookup::warn(format!(
                "credential helper {program} answered something other than its JSON ({e}); trying {key} without credentials"
            )),
        }
    }

    /// The helper's file on the search path, as `exec` would find it.
    fn find(&self, program: &str) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path.as_ref()?;
        std::env::split_paths(path)
            .map(|dir| dir.join(program))
            .find(|candidate| {
                std::fs::metadata(candidate)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
    }
}

/// The outcome of a lookup.
#[derive(Debug, Default)]
pub struct Lookup {
    /// What to authenticate with; `None`: anonymously.
    pub credential: Option<Credential>,
    /// One line for the user when configured credentials could not be had.
    pub warning: Option<String>,
}

impl Lookup {
    fn warn(message: String) -> Lookup {
        Lookup {
            credential: None,
            warning: Some(message),
        }
    }
}

/// The name Docker files a registry's credentials under (and hands to
/// helpers): the host, or Docker Hub's index URL.
pub fn server_key(host: &str) -> String {
    match host {
        DOCKER_HUB_API | "docker.io" | "index.docker.io" => DOCKER_HUB_KEY.to_owned(),
        other => other.to_owned(),
    }
}

/// Docker's `ConvertToHostname`: `https://host/v1/` files under `host`.
fn hostname_of(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
}

impl ConfigFile {
    /// The exact key first, then any key with the same host name.
    fn auth_for(&self, key: &str) -> Option<&AuthEntry> {
        if let Some(entry) = self.auths.get(key) {
            return Some(entry);
        }
        let host = hostname_of(key);
        let mut keys: Vec<&String> = self.auths.keys().collect();
        keys.sort();
        keys.into_iter()
            .find(|k| hostname_of(k) == host)
            .and_then(|k| self.auths.get(k))
    }
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl AuthEntry {
    fn credential(&self) -> Option<Credential> {
        if let Some(token) = self.identitytoken.as_ref().filter(|t| !t.is_empty()) {
            return Some(Credential::IdentityToken(token.clone()));
        }
        if let Some(auth) = self.auth.as_ref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (username, password) = text.split_once(':')?;
            return Some(Credential::Password {
                username: username.to_owned(),
                password: password.to_owned(),
            });
        }
        match (&self.username, &self.password) {
            (Some(username), Some(password)) if !username.is_empty() => {
                Some(Credential::Password {
                    username: username.clone(),
                    password: password.clone(),
                })
            }
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

impl HelperAnswer {
    fn credential(self) -> Option<Credential> {
        if self.secret.is_empty() {
            None
        } else if self.username == "<token>" {
            Some(Credential::IdentityToken(self.secret))
        } else {
            Some(Credential::Password {
                username: self.username,
                password: self.secret,
            })
        }
    }
}

/// The first line a failed helper printed, shortened: its reason, for the
/// warning (helpers print no secret when they fail).
fn first_line(stdout: &[u8], stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(if stdout.trim_ascii().is_empty() {
        stderr
    } else {
        stdout
    })
    .into_owned();
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no output");
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source_with(config: &str) -> (tempfile::TempDir, CredentialSource) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let source = CredentialSource {
            config_dir: Some(dir.path().to_owned()),
            path: Some(OsString::new()),
        };
        (dir, source)
    }

    #[tokio::test]
    async fn auths_entries_are_found_by_host_name() {
        let auth = base64::engine::general_purpose::STANDARD.encode("me:pw");
        let (_dir, source) = source_with(&format!(
            r#"{{"auths": {{"https://ghcr.io/v1/": {{"auth": "{auth}"}},
                "https://index.docker.io/v1/": {{"identitytoken": "refresh"}},
                "plain.example": {{"username": "u", "password": "p"}}}}}}"#
        ));
        let second = Duration::from_secs(1);
        assert_eq!(
            source.lookup("ghcr.io", second).await.credential,
            Some(Credential::Password {
                username: "me".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            source.lookup(DOCKER_HUB_API, second).await.credential,
            Some(Credential::IdentityToken("refresh".into()))
        );
        assert_eq!(
            source.lookup("plain.example", second).await.credential,
            Some(Credential::Password {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            source.lookup("other.example", second).await.credential,
            None
        );
    }

    #[tokio::test]
    async fn a_missing_helper_is_a_warning_naming_it() {
        let (_dir, source) = source_with(
            r#"{"credsStore": "nowhere", "auths": {"h.example": {"auth": "bWU6cHc="}}}"#,
        );
        let found = source.lookup("h.example", Duration::from_secs(1)).await;
        assert_eq!(
            found.credential, None,
            "a configured store wins over auths, as in Docker"
        );
        let warning = found.warning.unwrap();
        assert!(
            warning.contains("docker-credential-nowhere") && warning.contains("credsStore"),
            "{warning}"
        );
    }

    #[test]
    fn credentials_never_show_their_secret() {
        let shown = format!(
            "{:?} {:?}",
            Credential::Password {
                username: "me".into(),
                password: "hunter2".into()
            },
            Credential::IdentityToken("refresh-secret".into())
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("refresh-secret"),
            "{shown}"
        );
    }
}
