//! Waiting until a started container is ready, by the service's [`WaitKind`].

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerStateStatusEnum, ExecConfig, HealthStatusEnum};
use bollard::query_parameters::LogsOptions;
use bollard::Docker;
use futures_util::StreamExt;
use http::header::USER_AGENT;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::config::{LogPattern, WaitKind, WaitStrategy};

/// Bytes of an exec probe's output kept for the message: its end, where errors are.
const EXEC_OUTPUT_KEEP: usize = 2048;

/// How long one http probe may take, connect included.
const HTTP_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Characters of the exec output's last line that a message shows.
const EXEC_LINE_SHOWN: usize = 200;

/// A started container to wait for.
pub(crate) struct Target<'a> {
    pub docker: &'a Docker,
    /// Container name or id.
    pub container: &'a str,
    /// Where published ports are reached.
    pub host: &'a str,
    /// Container port to published host port.
    pub ports: &'a HashMap<u16, u16>,
    /// The rendered `wait.exec` command, for exec waits.
    pub exec: &'a [String],
    /// Run the container's healthcheck here while it is `starting`: Podman
    /// runs them from systemd timers, so without systemd never.
    pub run_healthcheck: bool,
}

/// Why a container is not ready; the caller adds exit code and logs.
#[derive(Debug)]
pub(crate) enum NotReady {
    /// The deadline passed; `last` says what the last probe saw.
    TimedOut { last: String },
    /// The container stopped while we waited.
    Exited { detail: String },
    /// Waiting cannot succeed, e.g. a healthcheck wait on an image without one.
    Impossible(String),
}

/// Waits until the container is ready or `deadline` passes.
pub(crate) async fn wait_ready(
    target: &Target<'_>,
    wait: &WaitStrategy,
    deadline: Instant,
) -> Result<(), NotReady> {
    let mut last = String::from("no probe finished yet");
    let outcome = timeout_at(deadline, wait_kind(target, wait, &mut last)).await;
    match outcome {
        Ok(result) => result,
        Err(_) => Err(NotReady::TimedOut { last }),
    }
}

async fn wait_kind(
    target: &Target<'_>,
    wait: &WaitStrategy,
    last: &mut String,
) -> Result<(), NotReady> {
    loop {
        let health = alive(target).await?;
        let probe = match &wait.kind {
            WaitKind::Running => Ok(()),
            WaitKind::Tcp { port } => match published(target, *port) {
                Ok(host_port) => probe_tcp(target.host, host_port).await,
                Err(why) => Err(why),
            },
            WaitKind::Http { path, port, status } => match published(target, *port) {
                Ok(host_port) => probe_http(target.host, host_port, path, *status).await,
                Err(why) => Err(why),
            },
            WaitKind::Exec { .. } => probe_exec(target, target.exec).await,
            WaitKind::Healthcheck => match health {
                Some(HealthStatusEnum::HEALTHY) => Ok(()),
                Some(HealthStatusEnum::STARTING) if target.run_healthcheck => {
                    probe_healthcheck(target).await
                }
                Some(status) => Err(format!("docker reports health {status:?}").to_lowercase()),
                None => {
                    return Err(NotReady::Impossible(
                        "the container has no healthcheck; add a `healthcheck` table to the service or use another wait".into(),
                    ))
                }
            },
            // Logs are followed as a stream, not polled.
            WaitKind::Log { pattern, times } => return wait_for_log(target, pattern, *times, last).await,
        };
        match probe {
            Ok(()) => return Ok(()),
            Err(why) => *last = why,
        }
        sleep(wait.interval).await;
    }
}

/// Fails when the container is no longer running; returns its health status.
async fn alive(target: &Target<'_>) -> Result<Option<HealthStatusEnum>, NotReady> {
    let inspect = target
        .docker
        .inspect_container(target.container, None)
        .await
        .map_err(|e| NotReady::Exited {
            detail: format!("the container cannot be inspected: {e}"),
        })?;
    let state = inspect.state.unwrap_or_default();
    if state.running != Some(true) || state.status == Some(ContainerStateStatusEnum::EXITED) {
        return Err(NotReady::Exited {
            detail: exit_detail(&state),
        });
    }
    Ok(state
        .health
        .and_then(|h| h.status)
        .filter(|s| !matches!(s, HealthStatusEnum::EMPTY | HealthStatusEnum::NONE)))
}

/// `exited with code 1 (OOM killed)`, or the state the container is in.
pub(crate) fn exit_detail(state: &bollard::models::ContainerState) -> String {
    let mut detail = match (state.running, state.exit_code) {
        (Some(true), _) => "the container is still running".to_owned(),
        (_, Some(code)) => format!("the container exited with code {code}"),
        _ => format!("the container is {:?}", state.status).to_lowercase(),
    };
    if state.oom_killed == Some(true) {
        detail.push_str(" (killed: out of memory)");
    }
    if let Some(error) = state.error.as_deref().filter(|e| !e.is_empty()) {
        detail.push_str(&format!(" ({error})"));
    }
    detail
}

/// Follows stdout and stderr from the start until `times` lines match.
async fn wait_for_log(
    target: &Target<'_>,
    pattern: &LogPattern,
    times: u32,
    last: &mut String,
) -> Result<(), NotReady> {
    let options = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        tail: "all".to_owned(),
        ..Default::default()
    };
    let mut stream = target.docker.logs(target.container, Some(options));
    let mut seen = 0;
    // Frames are not lines: keep the partial line of each stream apart.
    let mut partial: HashMap<bool, String> = HashMap::new();
    *last = format!("saw 0 of {times} matching lines");
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| NotReady::Exited {
            detail: format!("the log stream broke: {e}"),
        })?;
        let is_stderr = matches!(frame, bollard::container::LogOutput::StdErr { .. });
        let buf = partial.entry(is_stderr).or_default();
        buf.push_str(&String::from_utf8_lossy(frame.as_ref()));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            // Without the line break, so that a regex can anchor with `$`.
            if pattern.matches(line.trim_end_matches(['\n', '\r'])) {
                seen += 1;
                *last = format!("saw {seen} of {times} matching lines");
                if seen >= times {
                    return Ok(());
                }
            }
        }
    }
    // The stream ends when the container stops; a last unterminated line still counts.
    let tail_matches = partial.values().filter(|l| pattern.matches(l)).count() as u32;
    if seen + tail_matches >= times {
        return Ok(());
    }
    let state = target
        .docker
        .inspect_container(target.container, None)
        .await
        .ok()
        .and_then(|i| i.state)
        .unwrap_or_default();
    Err(NotReady::Exited {
        detail: format!(
            "{} after logging {seen} of {times} matching lines",
            exit_detail(&state)
        ),
    })
}

fn published(target: &Target<'_>, port: u16) -> Result<u16, String> {
    target
        .ports
        .get(&port)
        .copied()
        .ok_or_else(|| format!("container port {port} has no published host port"))
}

/// `host:port`, or `[v6]:port` for an IPv6 address, as URLs and messages write it.
fn authority(host: &str, port: u16) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Connects to the published port and requires the connection to stay open.
///
/// With docker-proxy (the default userland proxy) a connect to the published
/// port succeeds as soon as the container starts, before anything listens
/// inside: the proxy accepts, fails to reach the container, and closes. So a
/// probe passes only if, after connecting, the peer neither closes nor resets
/// within 300 ms (servers that wait for the client, like Postgres and Redis)
/// or sends a greeting (like MySQL or SMTP).
async fn probe_tcp(host: &str, port: u16) -> Result<(), String> {
    let address = authority(host, port);
    // (host, port), not the text: "::1:6379" is no socket address.
    let mut stream = match timeout(Duration::from_secs(2), TcpStream::connect((host, port))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("tcp {address}: {e}")),
        Err(_) => return Err(format!("tcp {address}: connect timed out")),
    };
    let mut byte = [0u8; 1];
    match timeout(Duration::from_millis(300), stream.read(&mut byte)).await {
        Err(_) => Ok(()),
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err(format!(
            "tcp {address}: connection closed at once (nothing listens in the container yet)"
        )),
        Ok(Err(e)) => Err(format!("tcp {address}: {e}")),
    }
}

/// `GET path`; ready on `status`, or any 2xx when none is given.
async fn probe_http(host: &str, port: u16, path: &str, status: Option<u16>) -> Result<(), String> {
    let url = http_url(host, port, path);
    let code = match timeout(HTTP_PROBE_TIMEOUT, http_status(&url)).await {
        Ok(Ok(code)) => code,
        Ok(Err(why)) => return Err(format!("GET {url}: {why}")),
        Err(_) => {
            let secs = HTTP_PROBE_TIMEOUT.as_secs();
            return Err(format!("GET {url}: no answer within {secs}s"));
        }
    };
    let ok = match status {
        Some(expected) => code == expected,
        None => (200..300).contains(&code),
    };
    if ok {
        Ok(())
    } else {
        let wanted = status.map_or("2xx".to_owned(), |s| s.to_string());
        Err(format!("GET {url} answered {code}, expected {wanted}"))
    }
}

/// `http://host:port/path`, with an IPv6 host in brackets.
fn http_url(host: &str, port: u16, path: &str) -> String {
    format!("http://{}{path}", authority(host, port))
}

/// The status code `GET url` answers; the body is not read.
async fn http_status(url: &str) -> Result<u16, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("not a valid request URL ({e}); check wait.http"))?;
    let request = Request::get(uri)
        .header(USER_AGENT, "cargo-ephem")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    // One connection per probe: a pooled one could outlive a restarting server.
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let response = client.request(request).await.map_err(|e| innermost(&e))?;
    Ok(response.status().as_u16())
}

/// The innermost cause, e.g. `Connection refused (os error 111)` rather than
/// `client error (Connect)`.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Runs the exec command in the container; ready when it exits 0.
/// Runs the container's own healthcheck test, as the daemon would.
async fn probe_healthcheck(target: &Target<'_>) -> Result<(), String> {
    let inspect = target
        .docker
        .inspect_container(target.container, None)
        .await
        .map_err(|e| format!("the container cannot be inspected: {e}"))?;
    let test = inspect
        .config
        .and_then(|c| c.healthcheck)
        .and_then(|h| h.test)
        .unwrap_or_default();
    match healthcheck_command(&test) {
        Some(cmd) => probe_exec(target, &cmd).await,
        None => Err(format!(
            "health starting, and its test {test:?} cannot be run here"
        )),
    }
}

/// The command of a healthcheck test: `["CMD", args...]` or `["CMD-SHELL", line]`.
fn healthcheck_command(test: &[String]) -> Option<Vec<String>> {
    match test {
        [kind, args @ ..] if kind == "CMD" && !args.is_empty() => Some(args.to_vec()),
        [kind, line] if kind == "CMD-SHELL" => {
            Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), line.clone()])
        }
        _ => None,
    }
}

async fn probe_exec(target: &Target<'_>, cmd: &[String]) -> Result<(), String> {
    let shown = cmd.join(" ");
    let done = exec_in(
        target.docker,
        target.container,
        cmd,
        Duration::from_secs(10),
    )
    .await?;
    match done.exit_code {
        Some(0) => Ok(()),
        code => {
            let said = last_line(&done.output);
            let code = code.map_or("unknown".to_owned(), |c| c.to_string());
            if said.is_empty() {
                Err(format!("exec {shown:?} exited with code {code}"))
            } else {
                Err(format!("exec {shown:?} exited with code {code}: {said}"))
            }
        }
    }
}

/// How a command run in a container ended.
pub(crate) struct ExecDone {
    /// Its exit code, when the daemon knows it.
    pub exit_code: Option<i64>,
    /// The end of its stdout and stderr, interleaved (bounded).
    pub output: String,
}

/// Runs `cmd` in `container` (no shell) and waits at most `limit` for it;
/// errors name the command.
pub(crate) async fn exec_in(
    docker: &Docker,
    container: &str,
    cmd: &[String],
    limit: Duration,
) -> Result<ExecDone, String> {
    let config = ExecConfig {
        cmd: Some(cmd.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let shown = cmd.join(" ");
    let exec = docker
        .create_exec(container, config)
        .await
        .map_err(|e| format!("exec {shown:?}: {e}"))?;
    let started = docker
        .start_exec(&exec.id, None::<StartExecOptions>)
        .await
        .map_err(|e| format!("exec {shown:?}: {e}"))?;
    let mut output = Vec::new();
    if let StartExecResults::Attached {
        output: mut stream, ..
    } = started
    {
        let drain = async {
            while let Some(Ok(chunk)) = stream.next().await {
                keep_tail(&mut output, chunk.as_ref());
            }
        };
        if timeout(limit, drain).await.is_err() {
            return Err(format!(
                "exec {shown:?}: still running after {}",
                humantime::format_duration(limit)
            ));
        }
    }
    let inspect = docker
        .inspect_exec(&exec.id)
        .await
        .map_err(|e| format!("exec {shown:?}: {e}"))?;
    Ok(ExecDone {
        exit_code: inspect.exit_code,
        output: tail_text(&output),
    })
}

/// Appends `chunk`, keeping only the last [`EXEC_OUTPUT_KEEP`] bytes once
/// twice that is held, so a chatty command costs bounded memory.
fn keep_tail(kept: &mut Vec<u8>, chunk: &[u8]) {
    kept.extend_from_slice(chunk);
    if kept.len() > 2 * EXEC_OUTPUT_KEEP {
        // Bytes, not a String: the cut may fall inside a character.
        kept.drain(..kept.len() - EXEC_OUTPUT_KEEP);
    }
}

/// The kept output as text, without the remains of a character cut at the start.
fn tail_text(kept: &[u8]) -> String {
    let cut = kept
        .iter()
        .take(3)
        .take_while(|b| *b & 0b1100_0000 == 0b1000_0000)
        .count();
    String::from_utf8_lossy(&kept[cut..]).into_owned()
}

/// The output's last non-empty line, at most [`EXEC_LINE_SHOWN`] characters of its end.
fn last_line(text: &str) -> String {
    let line = text.trim().lines().last().unwrap_or("").trim();
    let count = line.chars().count();
    if count <= EXEC_LINE_SHOWN {
        return line.to_owned();
    }
    let end: String = line.chars().skip(count - EXEC_LINE_SHOWN).collect();
    format!("...{end}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const BAD_HOST: &str = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";

    fn strings(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn healthcheck_tests_become_commands() {
        assert_eq!(
            healthcheck_command(&strings(&["CMD", "pg_isready", "-q"])),
            Some(strings(&["pg_isready", "-q"]))
        );
        assert_eq!(
            healthcheck_command(&strings(&["CMD-SHELL", "curl -f localhost || exit 1"])),
            Some(strings(&["/bin/sh", "-c", "curl -f localhost || exit 1"]))
        );
        assert_eq!(healthcheck_command(&strings(&["NONE"])), None);
        assert_eq!(healthcheck_command(&strings(&["CMD"])), None);
        assert_eq!(healthcheck_command(&[]), None);
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(authority("::1", 8080), "[::1]:8080");
        assert_eq!(authority("127.0.0.1", 8080), "127.0.0.1:8080");
        assert_eq!(authority("docker-host", 8080), "docker-host:8080");
    }

    /// A server on [::1] that accepts and holds every connection, answering
    /// a request with `answer` if given, or 400 when its Host is not `[::1]:PORT`.
    async fn ipv6_server(answer: Option<&'static str>) -> u16 {
        let listener = TcpListener::bind("[::1]:0").await.expect("bind [::1]:0");
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let n = stream.read(&mut request).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&request[..n]).to_lowercase();
                    let host = format!("\r\nhost: [::1]:{port}\r\n");
                    let answer = match answer {
                        Some(_) if !head.contains(&host) => BAD_HOST,
                        Some(answer) => answer,
                        None => "",
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                    sleep(Duration::from_secs(5)).await;
                });
            }
        });
        port
    }

    #[test]
    fn ipv6_urls_are_bracketed() {
        let url = http_url("::1", 8080, "/health");
        assert_eq!(url, "http://[::1]:8080/health");
        let uri: Uri = url.parse().unwrap();
        assert_eq!(uri.authority().unwrap().as_str(), "[::1]:8080");
    }

    #[tokio::test]
    async fn tcp_probe_reaches_an_ipv6_host() {
        let port = ipv6_server(None).await;
        probe_tcp("::1", port).await.unwrap();
    }

    #[tokio::test]
    async fn http_probe_reaches_an_ipv6_host() {
        let port = ipv6_server(Some("HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")).await;
        probe_http("::1", port, "/health", None).await.unwrap();
        probe_http("::1", port, "/health", Some(204)).await.unwrap();
        let wrong = probe_http("::1", port, "/health", Some(200))
            .await
            .unwrap_err();
        assert_eq!(
            wrong,
            format!("GET http://[::1]:{port}/health answered 204, expected 200")
        );
    }

    /// Multi-byte output shifted by every offset of its 10-byte pattern and
    /// fed in chunks of 1 to 5 bytes, so that cuts land at every offset
    /// inside every width of character.
    #[test]
    fn exec_output_is_cut_on_character_boundaries() {
        let unit = "aé€😀"; // 1 + 2 + 3 + 4 bytes
        for pad in 0..unit.len() {
            let input = format!("{}{}", "x".repeat(pad), unit.repeat(600));
            for chunk_size in 1..=5 {
                let mut kept = Default::default();
                for chunk in input.as_bytes().chunks(chunk_size) {
                    keep_tail(&mut kept, chunk);
                }
                let text = tail_text(&kept);
                assert!(
                    !text.is_empty() && text.len() <= 2 * EXEC_OUTPUT_KEEP,
                    "{} bytes kept",
                    text.len()
                );
                assert!(
                    input.ends_with(&text),
                    "pad {pad}, chunks of {chunk_size}: not a suffix of the output: {text:?}"
                );
            }
        }
    }

    #[test]
    fn the_last_line_is_shown_and_bounded() {
        assert_eq!(last_line("first\nnot yet\n\n"), "not yet");
        let long = "€".repeat(3000);
        let shown = last_line(&long);
        assert_eq!(shown, format!("...{}", "€".repeat(EXEC_LINE_SHOWN)));
    }
}
