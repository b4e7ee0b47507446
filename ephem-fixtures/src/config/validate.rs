//! From the raw file to a checked [`EphemConfig`]: every mistake becomes one
//! [`ConfigError`] pointing at the value at fault.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::error::Locator;
use super::raw::{RawFile, RawHealthcheck, RawReset, RawService, RawWait, Scalar, RESET_FORMS};
use super::{
    ConfigError, EphemConfig, HealthcheckSpec, ImagesConfig, LogPattern, Reset, ReuseConfig,
    SecretRef, ServiceKubernetes, ServiceSpec, ShardsConfig, WaitKind, WaitStrategy,
    DEFAULT_STARTUP_TIMEOUT, DEFAULT_WAIT_INTERVAL, MAX_SHARD_TEST_THREADS,
};
use crate::image_ref::ImageRef;
use crate::template::{Template, Var};
use crate::BackendKind;

/// Where a template is used decides which variables it may name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    /// `env` values: rendered before the container exists.
    Env,
    /// `cmd`, `args`, `wait.exec`, `healthcheck.test`: rendered after `env`.
    Command,
    /// `export` values: rendered once the container runs.
    Export,
}

pub(super) fn parse(text: &str, path: &Path) -> Result<EphemConfig, ConfigError> {
    let at = Locator::new(path, text);
    let raw: RawFile = toml::from_str(text).map_err(|e| at.toml_error(e))?;

    let backend = match &raw.backend {
        Some(name) => name
            .get_ref()
            .parse::<BackendKind>()
            .map_err(|e| at.error(name.span(), "backend", e))?,
        None => BackendKind::default(),
    };
    let shards = match raw.shards.as_ref().and_then(|s| s.test_threads.as_ref()) {
        Some(n) => ShardsConfig {
            test_threads: Some(check_test_threads(&at, n)?),
        },
        None => ShardsConfig::default(),
    };
    let reuse = match raw.reuse.as_ref().and_then(|r| r.ttl.as_ref()) {
        Some(ttl) => ReuseConfig {
            ttl: super::parse_duration(ttl.get_ref(), false)
                .map_err(|message| at.error(ttl.span(), "reuse.ttl", message))?,
            ..ReuseConfig::default()
        },
        None => ReuseConfig::default(),
    };
    let mut images = ImagesConfig::default();
    if let Some(raw_images) = &raw.images {
        if let Some(mirror) = &raw_images.mirror {
            images.mirror = Some(check_mirror(&at, mirror)?);
        }
        if let Some(cache) = &raw_images.cache {
            images.cache = Some(check_cache(&at, path, cache)?);
        }
        if let Some(idle) = &raw_images.idle_timeout {
            images.idle_timeout = super::parse_duration(idle.get_ref(), false)
                .map_err(|message| at.error(idle.span(), "images.idle-timeout", message))?;
        }
    }
    let kubernetes = super::kubernetes::check(&at, raw.kubernetes.as_ref())?;

    // Env keys of every service first: templates may refer to other services.
    let env_keys: HashMap<String, Vec<String>> = raw
        .services
        .iter()
        .map(|(name, svc)| {
            let keys = svc
                .get_ref()
                .env
                .keys()
                .map(|k| k.get_ref().clone())
                .collect();
            (name.get_ref().clone(), keys)
        })
        .collect();

    let has_helm = kubernetes.helm.is_some();
    let mut services = Vec::new();
    let secrets = RefCell::new(Vec::new());
    for (name, svc) in &raw.services {
        let mut spec = check_service(&at, name, svc, &env_keys, has_helm, &secrets)?;
        spec.kubernetes = super::kubernetes::check_service(
            &at,
            svc.get_ref().kubernetes.as_ref(),
            &format!("services.{}", name.get_ref()),
            kubernetes.pod_security,
        )?;
        services.push(spec);
    }
    check_dependencies(&at, &raw.services)?;
    check_exports_unique(&at, &raw.services)?;

    Ok(EphemConfig {
        path: path.to_owned(),
        backend,
        shards,
        reuse,
        images,
        kubernetes,
        services,
        secrets: secrets.into_inner(),
    })
}

fn check_test_threads(at: &Locator<'_>, n: &Spanned<i64>) -> Result<usize, ConfigError> {
    let value = *n.get_ref();
    match usize::try_from(value) {
        Ok(v) if (1..=MAX_SHARD_TEST_THREADS).contains(&v) => Ok(v),
        _ => Err(at.error(
            n.span(),
            "shards.test-threads",
            format!("{value} is out of range: a shard runs 1 to {MAX_SHARD_TEST_THREADS} tests at once (1 for suites whose tests share fixed state in a service)"),
        )),
    }
}

fn check_mirror(at: &Locator<'_>, mirror: &Spanned<String>) -> Result<String, ConfigError> {
    let value = mirror.get_ref().trim().trim_end_matches('/');
    if value.is_empty() || value.contains("://") || value.contains(char::is_whitespace) {
        return Err(at.error(
            mirror.span(),
            "images.mirror",
            format!("{value:?} is not a registry address; write host[:port][/path] without a scheme, e.g. \"localhost:5000\""),
        ));
    }
    Ok(value.to_owned())
}

/// `[images] cache`: a folder, relative to the configuration's own folder.
fn check_cache(
    at: &Locator<'_>,
    path: &Path,
    cache: &Spanned<String>,
) -> Result<std::path::PathBuf, ConfigError> {
    let value = cache.get_ref().trim();
    if value.is_empty() {
        return Err(at.error(
            cache.span(),
            "images.cache",
            "the cache folder is empty; write a folder, e.g. \".ephem/images\" (relative to ephem.toml's folder)",
        ));
    }
    let base = path.parent().unwrap_or(Path::new(""));
    Ok(base.join(value))
}

struct ServiceChecker<'a, 'b> {
    at: &'a Locator<'b>,
    name: &'a str,
    svc: &'a RawService,
    env_keys: &'a HashMap<String, Vec<String>>,
    image: ImageRef,
    ports: Vec<u16>,
    /// Whether `[kubernetes.helm]` gives `${service.NAME}` something to name.
    has_helm: bool,
    /// Where each `${secret.NAME}` is written, for the file's list.
    secrets: &'a RefCell<Vec<SecretRef>>,
}

fn check_service(
    at: &Locator<'_>,
    name: &Spanned<String>,
    svc: &Spanned<RawService>,
    env_keys: &HashMap<String, Vec<String>>,
    has_helm: bool,
    secrets: &RefCell<Vec<SecretRef>>,
) -> Result<ServiceSpec, ConfigError> {
    let key = format!("services.{}", name.get_ref());
    if !is_service_name(name.get_ref()) {
        return Err(at.error(
            name.span(),
            key,
            "service names are DNS labels: lowercase letters, digits, - and _, starting with a letter or digit, at most 63 characters",
        ));
    }
    let raw = svc.get_ref();
    let image = ImageRef::parse(raw.image.get_ref())
        .map_err(|e| at.error(raw.image.span(), format!("{key}.image"), e))?;

    let mut ports = Vec::new();
    if let Some(list) = &raw.ports {
        for (i, port) in list.get_ref().iter().enumerate() {
            let value = *port.get_ref();
            if value == 0 {
                return Err(at.error(
                    port.span(),
                    format!("{key}.ports[{i}]"),
                    "port 0 cannot be published; give the container's port, e.g. 5432",
                ));
            }
            if ports.contains(&value) {
                return Err(at.error(
                    port.span(),
                    format!("{key}.ports[{i}]"),
                    format!("port {value} is listed twice; remove one"),
                ));
            }
            ports.push(value);
        }
    }

    let checker = ServiceChecker {
        at,
        name: name.get_ref(),
        svc: raw,
        env_keys,
        image,
        ports,
        has_helm,
        secrets,
    };
    checker.finish(&key)
}

impl ServiceChecker<'_, '_> {
    fn finish(self, key: &str) -> Result<ServiceSpec, ConfigError> {
        let raw = self.svc;
        let mut env = Vec::new();
        for (name, value) in &raw.env {
            let k = format!("{key}.env.{}", name.get_ref());
            if name.get_ref().is_empty()
                || name.get_ref().contains('=')
                || name.get_ref().contains('\0')
            {
                return Err(self.at.error(
                    name.span(),
                    k,
                    "environment variable names cannot be empty or contain `=`",
                ));
            }
            let Scalar(text) = value.get_ref();
            env.push((
                name.get_ref().clone(),
                self.template(text, value.span(), &k, Site::Env)?,
            ));
        }

        let cmd = match &raw.cmd {
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(self.at.error(
                        list.span(),
                        format!("{key}.cmd"),
                        "cmd is empty; remove it to keep the image's command",
                    ));
                }
                Some(self.templates(list.get_ref(), &format!("{key}.cmd"), Site::Command)?)
            }
            None => None,
        };
        let args = match &raw.args {
            Some(list) => self.templates(list.get_ref(), &format!("{key}.args"), Site::Command)?,
            None => Vec::new(),
        };

        let healthcheck = match &raw.healthcheck {
            Some(hc) => Some(self.healthcheck(hc, &format!("{key}.healthcheck"))?),
            None => None,
        };
        let wait = match &raw.wait {
            Some(wait) => self.wait(wait, &format!("{key}.wait"))?,
            None => WaitStrategy {
                kind: WaitKind::Running,
                interval: DEFAULT_WAIT_INTERVAL,
            },
        };
        let startup_timeout = match &raw.startup_timeout {
            Some(t) => self.duration(t, &format!("{key}.startup-timeout"))?,
            None => DEFAULT_STARTUP_TIMEOUT,
        };

        let mut export = Vec::new();
        for (name, value) in &raw.export {
            let k = format!("{key}.export.{}", name.get_ref());
            if !is_env_name(name.get_ref()) {
                return Err(self.at.error(name.span(), k, "exported names are environment variable names: letters, digits and _, not starting with a digit"));
            }
            export.push((
                name.get_ref().clone(),
                self.template(value.get_ref(), value.span(), &k, Site::Export)?,
            ));
        }

        let depends_on = raw
            .depends_on
            .as_ref()
            .map(|list| list.get_ref().iter().map(|d| d.get_ref().clone()).collect())
            .unwrap_or_default();
        let (setup, reset, per_test_databases) = self.baseline(key)?;
        let snapshot = self.snapshot(key)?;
        let tests = match &raw.tests {
            Some(expr) if expr.get_ref().trim().is_empty() => {
                return Err(self.at.error(
                    expr.span(),
                    format!("{key}.tests"),
                    "the filterset is empty; write the tests that get this service, e.g. \"test(/^db::/)\", or remove tests for all of them",
                ))
            }
            Some(expr) => Some(expr.get_ref().clone()),
            None => None,
        };

        Ok(ServiceSpec {
            name: self.name.to_owned(),
            image: self.image,
            env,
            ports: self.ports,
            cmd,
            args,
            wait,
            startup_timeout,
            export,
            depends_on,
            healthcheck,
            setup,
            reset,
            per_test_databases,
            kubernetes: ServiceKubernetes::default(),
            snapshot,
            tests,
        })
    }

    /// `snapshot`, its `quiesce` command rendered like `setup`'s.
    fn snapshot(&self, key: &str) -> Result<Option<super::SnapshotSpec>, ConfigError> {
        let Some(raw) = &self.svc.snapshot else {
            return Ok(None);
        };
        let quiesce = match raw.get_ref() {
            super::raw::RawSnapshot::Table(table) => match &table.quiesce {
                Some(q) => {
                    Some(self.exec(&q.get_ref().exec, &format!("{key}.snapshot.quiesce.exec"))?)
                }
                None => None,
            },
            super::raw::RawSnapshot::Enabled(_) => None,
        };
        super::snapshot::check(self.at, raw, &self.image, key, quiesce)
    }

    /// `setup`, `reset` and `databases`: how the service's baseline is made
    /// and restored.
    #[allow(clippy::type_complexity)]
    fn baseline(
        &self,
        key: &str,
    ) -> Result<(Option<Vec<Template>>, Option<Reset>, bool), ConfigError> {
        let raw = self.svc;
        let setup = match &raw.setup {
            Some(exec) => Some(self.exec(&exec.get_ref().exec, &format!("{key}.setup.exec"))?),
            None => None,
        };
        let reset = match &raw.reset {
            None => None,
            Some(r) => Some(match r.get_ref() {
                RawReset::Named(name) if name == "postgres" => Reset::Postgres,
                RawReset::Named(name) if name == "redis" => Reset::Redis,
                RawReset::Named(other) => {
                    return Err(self.at.error(
                        r.span(),
                        format!("{key}.reset"),
                        format!("unknown reset {other:?}; write {RESET_FORMS}"),
                    ))
                }
                RawReset::Exec(exec) => {
                    Reset::Exec(self.exec(&exec.exec, &format!("{key}.reset.exec"))?)
                }
            }),
        };
        let per_test = match &raw.databases {
            None => false,
            Some(d) if d.get_ref() == "per-test" => true,
            Some(d) => {
                return Err(self.at.error(
                    d.span(),
                    format!("{key}.databases"),
                    format!(
                        "{:?} is not a databases mode; the one there is: \"per-test\"",
                        d.get_ref()
                    ),
                ))
            }
        };
        self.check_baseline(key, setup.is_some(), reset.as_ref(), per_test)?;
        Ok((setup, reset, per_test))
    }

    /// The combinations that cannot work, each pointing at its key.
    fn check_baseline(
        &self,
        key: &str,
        has_setup: bool,
        reset: Option<&Reset>,
        per_test: bool,
    ) -> Result<(), ConfigError> {
        let raw = self.svc;
        let reset_span = || raw.reset.as_ref().map(|r| r.span()).unwrap_or_default();
        if matches!(reset, Some(Reset::Redis)) && has_setup {
            return Err(self.at.error(
                reset_span(),
                format!("{key}.reset"),
                "a Redis baseline is empty: FLUSHALL would undo setup; drop setup, or reset with { exec = [...] }",
            ));
        }
        if per_test && reset.is_some() {
            return Err(self.at.error(
                reset_span(),
                format!("{key}.reset"),
                "databases = \"per-test\" already gives every test a fresh database; drop reset",
            ));
        }
        let needs_port = match reset {
            Some(Reset::Postgres) => Some(("reset = \"postgres\"", 5432, reset_span())),
            Some(Reset::Redis) => Some(("reset = \"redis\"", 6379, reset_span())),
            _ if per_test => Some((
                "databases = \"per-test\"",
                5432,
                raw.databases.as_ref().map(|d| d.span()).unwrap_or_default(),
            )),
            _ => None,
        };
        if let Some((what, port, span)) = needs_port {
            if !self.ports.contains(&port) {
                return Err(self.at.error(
                    span,
                    key.to_owned(),
                    format!("{what} talks to the service from the runner on port {port}; add {port} to ports"),
                ));
            }
        }
        Ok(())
    }

    fn exec(
        &self,
        list: &Spanned<Vec<Spanned<String>>>,
        key: &str,
    ) -> Result<Vec<Template>, ConfigError> {
        if list.get_ref().is_empty() {
            return Err(self.at.error(
                list.span(),
                key,
                "the command is empty; give the program and its arguments",
            ));
        }
        self.templates(list.get_ref(), key, Site::Command)
    }

    fn templates(
        &self,
        list: &[Spanned<String>],
        key: &str,
        site: Site,
    ) -> Result<Vec<Template>, ConfigError> {
        list.iter()
            .enumerate()
            .map(|(i, item)| {
                self.template(item.get_ref(), item.span(), &format!("{key}[{i}]"), site)
            })
            .collect()
    }

    fn template(
        &self,
        text: &str,
        span: std::ops::Range<usize>,
        key: &str,
        site: Site,
    ) -> Result<Template, ConfigError> {
        let template = Template::parse(text).map_err(|e| self.at.error(span.clone(), key, e))?;
        for var in template.vars() {
            if let Some(problem) = self.check_var(var, site) {
                return Err(self.at.error(span, key, problem));
            }
            if let Var::Secret(name) = var {
                let at = self.at.error(span.clone(), key, String::new());
                self.secrets
                    .borrow_mut()
                    .push(SecretRef::new(name.clone(), at));
            }
        }
        Ok(template)
    }

    /// Why `var` cannot be used at `site` in this service, if it cannot.
    fn check_var(&self, var: &Var, site: Site) -> Option<String> {
        let name = self.name;
        match var {
            Var::Random | Var::Secret(_) | Var::Shard | Var::Run => None,
            Var::Database if site == Site::Export => None,
            Var::Database => Some(format!(
                "{var} is the test's own database, known per test; use it in export (e.g. DATABASE_URL)"
            )),
            Var::Host if site == Site::Export => None,
            Var::Host => Some(format!(
                "{var} is only known once the container runs; use it in export (services reach each other by name, e.g. `{name}`)"
            )),
            Var::Port(port) if !self.ports.contains(port) => Some(format!(
                "{var} is not a published port of {name} (ports = {:?}); add {port} to ports",
                self.ports
            )),
            Var::Port(port) if site != Site::Export => Some(format!(
                "{var} is only known once the container runs; use it in export, or the container port {port} inside the network"
            )),
            Var::Port(_) => None,
            Var::Env(_) if site == Site::Env => Some(format!(
                "{var} cannot be used inside env; repeat the value or use ${{random}} in one variable and ${{env.NAME}} in cmd, args or export"
            )),
            Var::Env(key) => {
                let keys = &self.env_keys[name];
                (!keys.contains(key)).then(|| {
                    format!("{var} is not in services.{name}.env (it has {}); add {key} to env", list_or_none(keys))
                })
            }
            Var::ChartService(_) if site != Site::Export => Some(format!(
                "{var} is only known once the Helm chart is installed; use it in export"
            )),
            Var::ChartService(_) if !self.has_helm => Some(format!(
                "{var} names a Service of the [kubernetes.helm] chart, and there is none; add [kubernetes.helm] or remove it"
            )),
            Var::ChartService(_) => None,
            Var::ServiceEnv { service, key } => {
                let Some(keys) = self.env_keys.get(service) else {
                    return Some(format!("{var}: there is no service `{service}`"));
                };
                let depends = self
                    .svc
                    .depends_on
                    .as_ref()
                    .is_some_and(|d| d.get_ref().iter().any(|d| d.get_ref() == service));
                if !depends {
                    Some(format!("{var}: {name} does not depend on {service}; add \"{service}\" to depends-on"))
                } else if !keys.contains(key) {
                    Some(format!("{var} is not in services.{service}.env (it has {}); add {key} there", list_or_none(keys)))
                } else {
                    None
                }
            }
        }
    }

    fn duration(&self, value: &Spanned<String>, key: &str) -> Result<Duration, ConfigError> {
        self.parse_duration(value, key, false)
    }

    fn parse_duration(
        &self,
        value: &Spanned<String>,
        key: &str,
        allow_zero: bool,
    ) -> Result<Duration, ConfigError> {
        super::parse_duration(value.get_ref(), allow_zero)
            .map_err(|message| self.at.error(value.span(), key, message))
    }

    fn published(&self, port: &Spanned<u16>, key: &str) -> Result<u16, ConfigError> {
        let value = *port.get_ref();
        if self.ports.contains(&value) {
            Ok(value)
        } else {
            Err(self.at.error(
                port.span(),
                key,
                format!(
                    "{value} is not a published port of {} (ports = {:?}); add {value} to ports",
                    self.name, self.ports
                ),
            ))
        }
    }

    fn wait(&self, wait: &Spanned<RawWait>, key: &str) -> Result<WaitStrategy, ConfigError> {
        let raw = wait.get_ref();
        let kinds: Vec<&str> = [
            raw.log.as_ref().map(|_| "log"),
            raw.exec.as_ref().map(|_| "exec"),
            raw.tcp.as_ref().map(|_| "tcp"),
            raw.http.as_ref().map(|_| "http"),
            raw.healthcheck.as_ref().map(|_| "healthcheck"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match kinds.as_slice() {
            [_] => {}
            [] => {
                return Err(self.at.error(wait.span(), key, "wait needs one kind: log, exec, tcp, http or healthcheck, e.g. wait = { tcp = 5432 }"))
            }
            [first, second, ..] => {
                return Err(self.at.error(wait.span(), key, format!("wait has both `{first}` and `{second}`; keep one kind per service")))
            }
        }
        let kind = kinds[0];
        // Options that belong to another kind are mistakes, not no-ops.
        let misplaced = [
            ("regex", raw.regex.as_ref().map(Spanned::span), "log"),
            ("times", raw.times.as_ref().map(Spanned::span), "log"),
            ("port", raw.port.as_ref().map(Spanned::span), "http"),
            ("status", raw.status.as_ref().map(Spanned::span), "http"),
        ];
        for (option, span, owner) in misplaced {
            if let Some(span) = span {
                if owner != kind {
                    return Err(self.at.error(
                        span,
                        format!("{key}.{option}"),
                        format!("`{option}` only applies to {owner} waits, not {kind}; remove it"),
                    ));
                }
            }
        }
        let interval = match &raw.interval {
            Some(i) => self.duration(i, &format!("{key}.interval"))?,
            None => DEFAULT_WAIT_INTERVAL,
        };

        let kind = if let Some(text) = &raw.log {
            let k = format!("{key}.log");
            if text.get_ref().is_empty() {
                return Err(self.at.error(
                    text.span(),
                    k,
                    "the log text is empty; give a line fragment the service prints when ready",
                ));
            }
            let pattern = if raw.regex.as_ref().is_some_and(|r| *r.get_ref()) {
                let re = regex::Regex::new(text.get_ref()).map_err(|e| {
                    self.at.error(
                        text.span(),
                        k,
                        format!("invalid regex: {}", one_line(&e.to_string())),
                    )
                })?;
                LogPattern::Regex(re)
            } else {
                LogPattern::Substring(text.get_ref().clone())
            };
            let times = match &raw.times {
                Some(t) if *t.get_ref() == 0 => {
                    return Err(self.at.error(
                        t.span(),
                        format!("{key}.times"),
                        "times must be at least 1",
                    ))
                }
                Some(t) => *t.get_ref(),
                None => 1,
            };
            WaitKind::Log { pattern, times }
        } else if let Some(command) = &raw.exec {
            if command.get_ref().is_empty() {
                return Err(self.at.error(
                    command.span(),
                    format!("{key}.exec"),
                    "the command is empty; write e.g. [\"pg_isready\", \"-h\", \"127.0.0.1\"]",
                ));
            }
            WaitKind::Exec {
                command: self.templates(
                    command.get_ref(),
                    &format!("{key}.exec"),
                    Site::Command,
                )?,
            }
        } else if let Some(port) = &raw.tcp {
            WaitKind::Tcp {
                port: self.published(port, &format!("{key}.tcp"))?,
            }
        } else if let Some(path) = &raw.http {
            if !path.get_ref().starts_with('/') {
                return Err(self.at.error(
                    path.span(),
                    format!("{key}.http"),
                    format!(
                        "{:?} is not a request path; write e.g. \"/health\"",
                        path.get_ref()
                    ),
                ));
            }
            let port = match (&raw.port, self.ports.as_slice()) {
                (Some(port), _) => self.published(port, &format!("{key}.port"))?,
                (None, [only]) => *only,
                (None, _) => {
                    return Err(self.at.error(
                        path.span(),
                        format!("{key}.port"),
                        format!(
                            "{} publishes {:?}; say which with port = N",
                            self.name, self.ports
                        ),
                    ))
                }
            };
            let status = match &raw.status {
                Some(s) if !(100..=599).contains(s.get_ref()) => {
                    return Err(self.at.error(
                        s.span(),
                        format!("{key}.status"),
                        "an HTTP status is between 100 and 599",
                    ))
                }
                Some(s) => Some(*s.get_ref()),
                None => None,
            };
            WaitKind::Http {
                path: path.get_ref().clone(),
                port,
                status,
            }
        } else if let Some(flag) = &raw.healthcheck {
            if !flag.get_ref() {
                return Err(self.at.error(flag.span(), format!("{key}.healthcheck"), "healthcheck = false waits for nothing; write healthcheck = true or remove wait"));
            }
            WaitKind::Healthcheck
        } else {
            return Err(self.at.error(
                wait.span(),
                key,
                "wait needs one kind: log, exec, tcp, http or healthcheck",
            ));
        };
        Ok(WaitStrategy { kind, interval })
    }

    fn healthcheck(
        &self,
        hc: &Spanned<RawHealthcheck>,
        key: &str,
    ) -> Result<HealthcheckSpec, ConfigError> {
        let raw = hc.get_ref();
        if raw.test.get_ref().is_empty() {
            return Err(self.at.error(
                raw.test.span(),
                format!("{key}.test"),
                "the test command is empty; write e.g. [\"pg_isready\"]",
            ));
        }
        let dur = |value: &Option<Spanned<String>>, name: &str, default: Duration| match value {
            Some(v) => self.duration(v, &format!("{key}.{name}")),
            None => Ok(default),
        };
        Ok(HealthcheckSpec {
            test: self.templates(raw.test.get_ref(), &format!("{key}.test"), Site::Command)?,
            interval: dur(&raw.interval, "interval", Duration::from_secs(1))?,
            timeout: dur(&raw.timeout, "timeout", Duration::from_secs(5))?,
            retries: raw.retries.as_ref().map_or(3, |r| *r.get_ref()),
            // Zero is a meaningful start period (the default), unlike a zero timeout.
            start_period: match &raw.start_period {
                Some(v) => self.parse_duration(v, &format!("{key}.start-period"), true)?,
                None => Duration::ZERO,
            },
        })
    }
}

fn check_dependencies(
    at: &Locator<'_>,
    services: &BTreeMap<Spanned<String>, Spanned<RawService>>,
) -> Result<(), ConfigError> {
    let names: Vec<&str> = services.keys().map(|k| k.get_ref().as_str()).collect();
    for (name, svc) in services {
        let Some(deps) = &svc.get_ref().depends_on else {
            continue;
        };
        for (i, dep) in deps.get_ref().iter().enumerate() {
            let key = format!("services.{}.depends-on[{i}]", name.get_ref());
            if !names.contains(&dep.get_ref().as_str()) {
                return Err(at.error(
                    dep.span(),
                    key,
                    format!(
                        "`{}` is not a service; services are {}",
                        dep.get_ref(),
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    // Depth-first search; `path` is the chain being explored.
    fn visit<'a>(
        name: &'a str,
        graph: &HashMap<&'a str, Vec<&'a str>>,
        done: &mut Vec<&'a str>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        if let Some(start) = path.iter().position(|n| *n == name) {
            let mut cycle = path[start..].to_vec();
            cycle.push(name);
            return Some(cycle);
        }
        if done.contains(&name) {
            return None;
        }
        path.push(name);
        for dep in graph.get(name).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.push(name);
        None
    }
    let graph: HashMap<&str, Vec<&str>> = services
        .iter()
        .map(|(name, svc)| {
            let deps = svc
                .get_ref()
                .depends_on
                .as_ref()
                .map(|d| d.get_ref().iter().map(|d| d.get_ref().as_str()).collect())
                .unwrap_or_default();
            (name.get_ref().as_str(), deps)
        })
        .collect();
    let mut done = Vec::new();
    for name in &names {
        if let Some(cycle) = visit(name, &graph, &mut done, &mut Vec::new()) {
            let first = cycle[0];
            let span =
                services
                    .iter()
                    .find(|(n, _)| n.get_ref() == first)
                    .map_or(0..0, |(_, svc)| {
                        svc.get_ref()
                            .depends_on
                            .as_ref()
                            .map_or(svc.span(), Spanned::span)
                    });
            return Err(at.error(
                span,
                format!("services.{first}.depends-on"),
                format!(
                    "dependency cycle {}; remove one of these dependencies",
                    cycle.join(" -> ")
                ),
            ));
        }
    }
    Ok(())
}

fn check_exports_unique(
    at: &Locator<'_>,
    services: &BTreeMap<Spanned<String>, Spanned<RawService>>,
) -> Result<(), ConfigError> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (name, svc) in services {
        for var in svc.get_ref().export.keys() {
            if let Some(other) = seen.insert(var.get_ref(), name.get_ref()) {
                return Err(at.error(
                    var.span(),
                    format!("services.{}.export.{}", name.get_ref(), var.get_ref()),
                    format!("{} is also exported by {other}; tests would see only one; rename one of them", var.get_ref()),
                ));
            }
        }
    }
    Ok(())
}

fn is_service_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn list_or_none(keys: &[String]) -> String {
    if keys.is_empty() {
        "no variables".to_owned()
    } else {
        keys.join(", ")
    }
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
