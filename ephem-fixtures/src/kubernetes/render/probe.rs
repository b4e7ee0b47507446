//! `wait` as a readiness probe: `tcp`, `http`, `exec` and `healthcheck`
//! become probes whose failure threshold leaves the decision to the startup
//! timeout; `log` and no wait are watched by provisioning instead.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::env::{config_error, RenderedEnv, Site};
use super::pod::Scope;
use super::{LogWait, ReadyWhen};
use crate::config::WaitKind;
use crate::EnvError;

/// Per-probe timeouts, as the Docker backend's waits use them.
const TCP_PROBE_TIMEOUT: i32 = 2;
const HTTP_PROBE_TIMEOUT: i32 = 3;
const EXEC_PROBE_TIMEOUT: i32 = 5;
/// Kubernetes' own default failure threshold, the least a probe gets.
const MIN_FAILURE_THRESHOLD: i32 = 3;

impl Scope<'_> {
    /// The readiness probe for `wait`, and what provisioning watches.
    pub(super) fn readiness(
        &self,
        env: &RenderedEnv<'_>,
    ) -> Result<(Option<Probe>, ReadyWhen), EnvError> {
        let spec = env.spec;
        let timeout = spec.startup_timeout;
        let probe = |period: Duration, probe_timeout: i32, probe: Probe| Probe {
            period_seconds: Some(whole_seconds(period)),
            timeout_seconds: Some(probe_timeout),
            failure_threshold: Some(failure_threshold(timeout, period)),
            ..probe
        };
        let interval = spec.wait.interval;
        let built = match &spec.wait.kind {
            WaitKind::Running => return Ok((None, ReadyWhen::Running)),
            WaitKind::Log { pattern, times } => {
                let wait = LogWait {
                    pattern: pattern.clone(),
                    times: *times,
                };
                return Ok((None, ReadyWhen::Log(wait)));
            }
            WaitKind::Tcp { port } => probe(
                interval,
                TCP_PROBE_TIMEOUT,
                Probe {
                    tcp_socket: Some(TCPSocketAction {
                        port: IntOrString::Int(i32::from(*port)),
                        host: None,
                    }),
                    ..Default::default()
                },
            ),
            WaitKind::Http { path, port, status } => {
                if let Some(code) = status.filter(|c| !(200..400).contains(c)) {
                    return Err(config_error(
                        spec,
                        "wait.status",
                        format!("Kubernetes httpGet probes pass on 200 to 399 only, so status = {code} cannot be waited for; use an exec wait instead"),
                    ));
                }
                probe(
                    interval,
                    HTTP_PROBE_TIMEOUT,
                    Probe {
                        http_get: Some(HTTPGetAction {
                            path: Some(path.clone()),
                            port: IntOrString::Int(i32::from(*port)),
                            scheme: Some("HTTP".to_owned()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
            }
            WaitKind::Exec { command } => probe(
                interval,
                EXEC_PROBE_TIMEOUT,
                exec_probe(self.words(env, command, "wait.exec", Site::Probe)?),
            ),
            WaitKind::Healthcheck => {
                let Some(hc) = &spec.healthcheck else {
                    return Err(config_error(
                        spec,
                        "wait.healthcheck",
                        format!("waits for the image's HEALTHCHECK, which only Docker runs; add a healthcheck table to services.{} (e.g. healthcheck = {{ test = [\"pg_isready\"] }}) or use another wait", spec.name),
                    ));
                };
                let test = self.words(env, &hc.test, "healthcheck.test", Site::Probe)?;
                probe(hc.interval, whole_seconds(hc.timeout), exec_probe(test))
            }
        };
        Ok((Some(built), ReadyWhen::ProbePassed))
    }
}

fn exec_probe(command: Vec<String>) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command),
        }),
        ..Default::default()
    }
}

/// Whole seconds, rounded up, at least 1 (probes count in seconds).
fn whole_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// Enough failures that the startup timeout, which provisioning enforces,
/// decides, never the probe.
fn failure_threshold(startup_timeout: Duration, period: Duration) -> i32 {
    let period = u64::try_from(whole_seconds(period)).unwrap_or(1);
    let probes = whole_seconds(startup_timeout) as u64 / period + 1;
    i32::try_from(probes)
        .unwrap_or(i32::MAX)
        .max(MIN_FAILURE_THRESHOLD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_timings_leave_the_decision_to_the_startup_timeout() {
        assert_eq!(whole_seconds(Duration::from_millis(250)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(
            failure_threshold(Duration::from_secs(60), Duration::from_millis(250)),
            61
        );
        assert_eq!(
            failure_threshold(Duration::from_secs(60), Duration::from_secs(2)),
            31
        );
        assert_eq!(
            failure_threshold(Duration::from_secs(1), Duration::from_secs(10)),
            3
        );
        assert_eq!(
            failure_threshold(
                Duration::from_secs(365 * 24 * 3600),
                Duration::from_millis(1)
            ),
            365 * 24 * 3600 + 1
        );
    }
}
