//! `reset = "redis"`: `FLUSHALL` over RESP on the published port, after
//! `AUTH` when the server requires a password.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::ReadyService;
use crate::EnvError;

/// Where a service's Redis is and how to log in to it.
pub(super) struct RedisTarget {
    address: String,
    password: Option<Password>,
}

/// The password `AUTH` sends, and where it was found (for errors; the
/// value itself is never shown).
struct Password {
    value: String,
    from: &'static str,
}

/// Why a flush failed.
pub(super) enum FlushError {
    /// The server wants a password we do not have, or refused ours.
    Auth(String),
    /// Not reachable, or not Redis.
    Other(String),
}

impl std::fmt::Display for FlushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushError::Auth(e) | FlushError::Other(e) => f.write_str(e),
        }
    }
}

impl RedisTarget {
    /// `host:port` of the service's published Redis port, and its password:
    /// the value after `--requirepass` in the container's command (`cmd`
    /// and `args`, as the official image passes them to redis-server), else
    /// `REDIS_PASSWORD` in its env (what images such as Bitnami's read).
    pub fn of(service: &ReadyService<'_>, host: &str) -> Result<RedisTarget, EnvError> {
        let port = service.ports.get(&6379).copied().ok_or_else(|| {
            EnvError::Other(format!(
                "services.{}: reset = \"redis\" needs port 6379 published",
                service.spec.name
            ))
        })?;
        let from_command = service.command.as_ref().and_then(|cmd| {
            let at = cmd.iter().position(|a| a == "--requirepass")?;
            cmd.get(at + 1).map(|value| Password {
                value: value.clone(),
                from: "`--requirepass` in its command",
            })
        });
        let password = from_command.or_else(|| {
            service.env.get("REDIS_PASSWORD").map(|value| Password {
                value: value.clone(),
                from: "REDIS_PASSWORD in its env",
            })
        });
        Ok(RedisTarget {
            address: format!("{}:{port}", bracket(host)),
            password,
        })
    }

    /// `FLUSHALL`: a Redis baseline is empty.
    pub async fn flushall(&self) -> Result<(), FlushError> {
        let address = &self.address;
        tokio::time::timeout(Duration::from_secs(10), self.exchange())
            .await
            .map_err(|_| FlushError::Other(format!("no answer from {address} within 10 s")))?
    }

    async fn exchange(&self) -> Result<(), FlushError> {
        let io = |e: std::io::Error| FlushError::Other(e.to_string());
        let mut stream = TcpStream::connect(&self.address).await.map_err(io)?;
        let mut request = Vec::new();
        if let Some(password) = &self.password {
            request.extend(command(&["AUTH", &password.value]));
        }
        request.extend(command(&["FLUSHALL"]));
        // One write: AUTH and FLUSHALL in one round trip.
        stream.write_all(&request).await.map_err(io)?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let auth = match &self.password {
            Some(_) => {
                reader.read_line(&mut line).await.map_err(io)?;
                Some(std::mem::take(&mut line))
            }
            None => None,
        };
        reader.read_line(&mut line).await.map_err(io)?;
        let flush = line.trim_end();
        if flush.starts_with("+OK") {
            // Also when AUTH said the server has no password: FLUSHALL ran.
            return Ok(());
        }
        let auth = auth.as_deref().map(str::trim_end);
        match (&self.password, auth) {
            (Some(password), Some(reply)) if reply.starts_with("-WRONGPASS") => {
                Err(FlushError::Auth(format!(
                    "Redis refused the password from {} (WRONGPASS)",
                    password.from
                )))
            }
            (None, _) if flush.starts_with("-NOAUTH") => Err(FlushError::Auth(
                "Redis requires a password (NOAUTH); cargo-ephem reads it from `--requirepass` \
                 in the service's command (cmd or args) or from REDIS_PASSWORD in its env, \
                 and found neither"
                    .to_owned(),
            )),
            (_, Some(reply)) if reply.starts_with('-') => Err(FlushError::Auth(format!(
                "AUTH answered {reply:?}, then FLUSHALL {flush:?}"
            ))),
            _ => Err(FlushError::Other(format!("FLUSHALL answered {flush:?}"))),
        }
    }
}

/// One command as a RESP array of bulk strings.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).into_bytes());
        out.extend(a.as_bytes());
        out.extend(b"\r\n");
    }
    out
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}
