//! `${...}` templates in configuration values, parsed once at load time.
//!
//! Parsing only knows the syntax; which variables a value may use (`${port.N}`
//! only in `export`, for example) is checked by the configuration loader.

use std::collections::HashMap;
use std::fmt;

use crate::secret;

/// A variable that can appear as `${...}` in a configuration value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    /// `${host}`: the address where published ports are reachable.
    Host,
    /// `${port.N}`: the host port published for container port N.
    Port(u16),
    /// `${env.NAME}`: the service's own environment variable, after substitution.
    Env(String),
    /// `${random}`: 24 fresh alphanumeric characters per shard and occurrence.
    Random,
    /// `${secret.NAME}`: the runner's environment variable NAME, masked
    /// wherever the runner shows or writes text.
    Secret(String),
    /// `${shard}`: the 1-based shard number.
    Shard,
    /// `${run}`: the run id.
    Run,
    /// `${database}`: the test's own database (`databases = "per-test"`),
    /// else the service's `POSTGRES_DB`.
    Database,
    /// `${services.NAME.env.KEY}`: an environment variable of a service this one depends on.
    ServiceEnv {
        /// The other service's name.
        service: String,
        /// The variable's name in that service's `env`.
        key: String,
    },
    /// `${service.NAME}`: `host:port` of Service NAME of the `[kubernetes.helm]`
    /// chart, as the tests reach it (Kubernetes only, in `export`).
    ChartService(String),
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Var::Host => write!(f, "${{host}}"),
            Var::Port(port) => write!(f, "${{port.{port}}}"),
            Var::Env(name) => write!(f, "${{env.{name}}}"),
            Var::Random => write!(f, "${{random}}"),
            Var::Secret(name) => write!(f, "${{secret.{name}}}"),
            Var::Shard => write!(f, "${{shard}}"),
            Var::Run => write!(f, "${{run}}"),
            Var::Database => write!(f, "${{database}}"),
            Var::ServiceEnv { service, key } => write!(f, "${{services.{service}.env.{key}}}"),
            Var::ChartService(name) => write!(f, "${{service.{name}}}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Var),
}

/// A configuration string with `${...}` variables; `$${` stands for a literal `${`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

/// The values a [`Template`] is rendered with; absent values are not available
/// where the template is used (the loader already rejected such templates).
#[derive(Debug, Default)]
pub struct Bindings<'a> {
    /// Value of `${host}`.
    pub host: Option<&'a str>,
    /// Container port to host port, for `${port.N}`.
    pub ports: Option<&'a HashMap<u16, u16>>,
    /// The service's rendered environment, for `${env.NAME}`.
    pub env: Option<&'a HashMap<String, String>>,
    /// Rendered environments of other services, for `${services.NAME.env.KEY}`.
    pub services_env: Option<&'a HashMap<String, HashMap<String, String>>>,
    /// Value of `${shard}`.
    pub shard: u32,
    /// Value of `${run}`.
    pub run: &'a str,
    /// Value of `${database}`, when known.
    pub database: Option<&'a str>,
}

impl Template {
    /// Parses `source`; the error names the offending `${...}` and how to fix it.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        while let Some(at) = rest.find('$') {
            literal.push_str(&rest[..at]);
            let after = &rest[at..];
            if let Some(tail) = after.strip_prefix("$${") {
                literal.push_str("${");
                rest = tail;
            } else if let Some(tail) = after.strip_prefix("${") {
                let Some(end) = tail.find('}') else {
                    return Err(format!(
                        "unclosed `${{` in {source:?}; close it with `}}` or write `$${{` for a literal `${{`"
                    ));
                };
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Var(parse_var(&tail[..end])?));
                rest = &tail[end + 1..];
            } else {
                literal.push('$');
                rest = &after[1..];
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    /// The text as written in the configuration.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every variable the template uses, in order of appearance.
    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|part| match part {
            Part::Var(var) => Some(var),
            Part::Literal(_) => None,
        })
    }

    /// Substitutes every variable; each `${random}` draws a fresh value and
    /// each `${secret.NAME}` reads the runner's environment; both are
    /// appended to `secrets` (and registered in [`crate::secret`]) so the
    /// runner masks them.
    pub fn render(
        &self,
        bindings: &Bindings<'_>,
        secrets: &mut Vec<String>,
    ) -> Result<String, String> {
        self.render_with(bindings, secrets, &|_| None)
    }

    /// Like [`render`](Self::render), but `extra` answers first: how a
    /// backend binds the variables only it knows (`${service.NAME}`).
    pub fn render_with(
        &self,
        bindings: &Bindings<'_>,
        secrets: &mut Vec<String>,
        extra: &dyn Fn(&Var) -> Option<String>,
    ) -> Result<String, String> {
        let mut out = String::with_capacity(self.source.len());
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Var(var) => match extra(var) {
                    Some(value) => out.push_str(&value),
                    None => out.push_str(&self.lookup(var, bindings, secrets)?),
                },
            }
        }
        Ok(out)
    }

    fn lookup(
        &self,
        var: &Var,
        b: &Bindings<'_>,
        secrets: &mut Vec<String>,
    ) -> Result<String, String> {
        let value = match var {
            Var::Host => b.host.map(str::to_owned),
            Var::Port(port) => b
                .ports
                .and_then(|ports| ports.get(port))
                .map(u16::to_string),
            Var::Env(name) => b.env.and_then(|env| env.get(name)).cloned(),
            Var::Random => {
                let token = secret::random_token()?;
                secrets.push(token.clone());
                Some(token)
            }
            Var::Secret(name) => {
                let value = secret::from_runner_env(name)?;
                secrets.push(value.clone());
                Some(value)
            }
            Var::Shard => Some(b.shard.to_string()),
            Var::Run => Some(b.run.to_owned()),
            Var::Database => b.database.map(str::to_owned),
            Var::ServiceEnv { service, key } => b
                .services_env
                .and_then(|all| all.get(service))
                .and_then(|env| env.get(key))
                .cloned(),
            Var::ChartService(_) => None,
        };
        value.ok_or_else(|| format!("{var} has no value here (in {:?})", self.source))
    }
}

fn parse_var(body: &str) -> Result<Var, String> {
    let body = body.trim();
    let var = match body {
        "host" => Var::Host,
        "random" => Var::Random,
        "shard" => Var::Shard,
        "run" => Var::Run,
        "database" => Var::Database,
        _ => {
            if let Some(port) = body.strip_prefix("port.") {
                match port.parse::<u16>() {
                    Ok(port) if port > 0 => Var::Port(port),
                    _ => {
                        return Err(format!(
                            "${{{body}}}: `{port}` is not a port number; write e.g. ${{port.5432}}"
                        ))
                    }
                }
            } else if let Some(name) = body.strip_prefix("env.") {
                if name.is_empty() {
                    return Err(
                        "${env.}: missing variable name; write e.g. ${env.POSTGRES_PASSWORD}"
                            .into(),
                    );
                }
                Var::Env(name.to_owned())
            } else if let Some(path) = body.strip_prefix("services.") {
                match path.split_once(".env.") {
                    Some((service, key)) if !service.is_empty() && !key.is_empty() => Var::ServiceEnv {
                        service: service.to_owned(),
                        key: key.to_owned(),
                    },
                    _ => {
                        return Err(format!(
                            "${{{body}}}: write ${{services.NAME.env.KEY}}, e.g. ${{services.postgres.env.POSTGRES_PASSWORD}}"
                        ))
                    }
                }
            } else if let Some(name) = body.strip_prefix("secret.") {
                if !is_env_name(name) {
                    return Err(format!(
                        "${{{body}}}: `{name}` is not an environment variable name; write ${{secret.NAME}} with letters, digits and _, e.g. ${{secret.API_TOKEN}}"
                    ));
                }
                Var::Secret(name.to_owned())
            } else if let Some(name) = body.strip_prefix("service.") {
                if name.is_empty() || name.contains('.') {
                    return Err(format!(
                        "${{{body}}}: write ${{service.NAME}} with the name of a Service of the Helm chart, e.g. ${{service.api}}"
                    ));
                }
                Var::ChartService(name.to_owned())
            } else {
                return Err(format!(
                    "unknown variable ${{{body}}}; use ${{host}}, ${{port.N}}, ${{env.NAME}}, ${{random}}, ${{secret.NAME}}, ${{shard}}, ${{run}}, ${{database}}, ${{services.NAME.env.KEY}} or ${{service.NAME}} (write $${{ for a literal ${{)"
                ));
            }
        }
    };
    Ok(var)
}

/// Letters, digits and `_`, not starting with a digit: a name every shell
/// and CI system can set.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bindings<'a>(
        ports: &'a HashMap<u16, u16>,
        env: &'a HashMap<String, String>,
    ) -> Bindings<'a> {
        Bindings {
            host: Some("127.0.0.1"),
            ports: Some(ports),
            env: Some(env),
            services_env: None,
            shard: 3,
            run: "run-1",
            database: Some("app"),
        }
    }

    #[test]
    fn renders_every_variable_kind() {
        let ports = HashMap::from([(5432, 49153)]);
        let env = HashMap::from([("PW".to_owned(), "secret".to_owned())]);
        let t = Template::parse("postgres://u:${env.PW}@${host}:${port.5432}/db_${shard}?r=${run}")
            .unwrap();
        let mut secrets = Vec::new();
        let out = t.render(&bindings(&ports, &env), &mut secrets).unwrap();
        assert_eq!(out, "postgres://u:secret@127.0.0.1:49153/db_3?r=run-1");
        assert!(secrets.is_empty());
    }

    #[test]
    fn random_is_fresh_per_occurrence_and_recorded() {
        let t = Template::parse("${random}-${random}").unwrap();
        let mut secrets = Vec::new();
        let out = t.render(&Bindings::default(), &mut secrets).unwrap();
        assert_eq!(secrets.len(), 2);
        assert_ne!(secrets[0], secrets[1]);
        assert_eq!(out, format!("{}-{}", secrets[0], secrets[1]));
        assert!(secrets
            .iter()
            .all(|s| s.len() == 24 && s.chars().all(|c| c.is_ascii_alphanumeric())));
    }

    #[test]
    fn dollar_escapes_and_lone_dollars_stay_literal() {
        let t = Template::parse("$${host} costs $5 ${shard}$").unwrap();
        let out = t
            .render(
                &Bindings {
                    shard: 2,
                    ..Default::default()
                },
                &mut Vec::new(),
            )
            .unwrap();
        assert_eq!(out, "${host} costs $5 2$");
    }

    #[test]
    fn rejects_unknown_unclosed_and_malformed_variables() {
        assert!(Template::parse("${nope}")
            .unwrap_err()
            .contains("unknown variable ${nope}"));
        assert!(Template::parse("${host").unwrap_err().contains("unclosed"));
        assert!(Template::parse("${port.abc}")
            .unwrap_err()
            .contains("not a port number"));
        assert!(Template::parse("${services.pg}")
            .unwrap_err()
            .contains("services.NAME.env.KEY"));
    }

    #[test]
    fn chart_services_come_from_the_backend() {
        let t = Template::parse("http://${service.api}/v1").unwrap();
        assert_eq!(t.vars().next(), Some(&Var::ChartService("api".into())));
        assert!(t.render(&Bindings::default(), &mut Vec::new()).is_err());
        let out = t
            .render_with(&Bindings::default(), &mut Vec::new(), &|var| match var {
                Var::ChartService(name) if name == "api" => Some("127.0.0.1:4000".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(out, "http://127.0.0.1:4000/v1");
        assert_eq!(t.vars().next().unwrap().to_string(), "${service.api}");
        assert!(Template::parse("${service.}").is_err());
        assert!(Template::parse("${service.a.b}").is_err());
    }

    #[test]
    fn secrets_name_a_variable_of_the_runners_environment() {
        // Rendering a set one: tests/secret_values.rs (it sets variables).
        let t = Template::parse("Bearer ${secret.EPHEM_TEMPLATE_TEST_TOKEN}").unwrap();
        assert_eq!(
            t.vars().next(),
            Some(&Var::Secret("EPHEM_TEMPLATE_TEST_TOKEN".into()))
        );
        let mut secrets = Vec::new();
        let unset = Template::parse("${secret.EPHEM_TEMPLATE_TEST_UNSET}").unwrap();
        let err = unset
            .render(&Bindings::default(), &mut secrets)
            .unwrap_err();
        assert!(err.contains("has no EPHEM_TEMPLATE_TEST_UNSET"), "{err}");
        for bad in [
            "${secret.}",
            "${secret.1X}",
            "${secret.A-B}",
            "${secret.a.b}",
        ] {
            assert!(Template::parse(bad)
                .unwrap_err()
                .contains("not an environment variable name"));
        }
    }

    #[test]
    fn missing_binding_is_an_error_not_a_panic() {
        let t = Template::parse("${port.1}").unwrap();
        assert!(t.render(&Bindings::default(), &mut Vec::new()).is_err());
    }
}
