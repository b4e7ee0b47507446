//! Env values and command words as Kubernetes must read them: generated
//! values only through the Secret, literal `$` doubled, and references to
//! secret variables as `$(VAR)`.

use std::collections::{BTreeSet, HashMap};

use crate::config::{EphemConfig, ServiceSpec};
use crate::template::Bindings;
use crate::{EnvError, ShardContext};

/// Marks a reference to a secret env var inside a rendered command word.
pub(super) const MARK: char = '\0';

/// A service's env, rendered with real values.
pub(super) struct RenderedEnv<'a> {
    pub spec: &'a ServiceSpec,
    pub values: HashMap<String, String>,
    /// Names whose value holds a generated value.
    pub secret: BTreeSet<String>,
}

/// Renders every service's env in start order, so that
/// `${services.NAME.env.KEY}` sees the dependency's values.
pub(super) fn render_envs<'a>(
    config: &'a EphemConfig,
    shard: &ShardContext,
    generated: &mut Vec<String>,
) -> Result<Vec<RenderedEnv<'a>>, EnvError> {
    let mut done: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut out = Vec::new();
    for spec in config.start_order() {
        let bindings = Bindings {
            services_env: Some(&done),
            shard: shard.shard,
            run: &shard.run.run_id,
            ..Default::default()
        };
        let mut values = HashMap::new();
        let mut secret = BTreeSet::new();
        for (name, template) in &spec.env {
            check_env_name(spec, name)?;
            let value = template.render(&bindings, generated).map_err(|e| {
                EnvError::Other(format!(
                    "shard {}: services.{}.env.{name}: {e}",
                    shard.shard, spec.name
                ))
            })?;
            if value.contains(MARK) {
                return Err(config_error(
                    spec,
                    &format!("env.{name}"),
                    "contains a NUL character, which no environment can carry; remove it",
                ));
            }
            // Directly or through another service's env: a generated value
            // anywhere in the text makes the whole value secret.
            if generated.iter().any(|g| value.contains(g.as_str())) {
                secret.insert(name.clone());
            }
            values.insert(name.clone(), value);
        }
        done.insert(spec.name.clone(), values.clone());
        out.push(RenderedEnv {
            spec,
            values,
            secret,
        });
    }
    Ok(out)
}

/// Kubernetes (1.33) takes printable ASCII env names except `=`; a secret
/// one also names a Secret key, which takes only `[-._a-zA-Z0-9]`.
fn check_env_name(spec: &ServiceSpec, name: &str) -> Result<(), EnvError> {
    if name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Ok(());
    }
    Err(config_error(
        spec,
        &format!("env.{name}"),
        "Kubernetes takes environment variable names of printable ASCII characters only; rename it",
    ))
}

pub(super) fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) fn config_error(spec: &ServiceSpec, key: &str, message: impl AsRef<str>) -> EnvError {
    EnvError::Other(format!(
        "services.{}.{key}: {}",
        spec.name,
        message.as_ref()
    ))
}

/// Where a command word goes: Kubernetes expands `$(VAR)` in container args
/// from the whole env, but in probe commands only from literal values
/// (kubelet's `ExpandContainerCommandOnlyStatic`): a Secret's value would
/// become an empty string there.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Site {
    Args,
    Probe,
}

/// A rendered word as Kubernetes must read it: literal `$` doubled, marked
/// references as `$(VAR)`.
pub(super) fn kubernetes_word(rendered: &str) -> String {
    rendered
        .split(MARK)
        .enumerate()
        .map(|(i, part)| match i % 2 {
            0 => escape_dollars(part),
            _ => format!("$({part})"),
        })
        .collect()
}

/// Kubernetes reads `$$` as `$` and `$(VAR)` as a variable in env values,
/// commands and args; doubling every `$` keeps the text as written.
pub(super) fn escape_dollars(text: &str) -> String {
    text.replace('$', "$$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_double_dollars_and_reference_marked_variables() {
        assert_eq!(kubernetes_word("plain"), "plain");
        assert_eq!(
            kubernetes_word("$(date) costs $5 $$"),
            "$$(date) costs $$5 $$$$"
        );
        assert_eq!(
            kubernetes_word("--password=\0PW\0&x=$1"),
            "--password=$(PW)&x=$$1"
        );
        assert_eq!(kubernetes_word("\0A\0\0B\0"), "$(A)$(B)");
    }
}
