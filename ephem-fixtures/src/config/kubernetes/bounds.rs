//! `[kubernetes.quota]` and `[kubernetes.limits]`: what one shard's
//! namespace may use, checked so that the API server accepts the
//! LimitRange and a defaulted container fits in the quota.

use std::cmp::Ordering;
use std::ops::Range;

use toml::Spanned;

use super::super::error::Locator;
use super::super::raw::{RawLimits, RawQuota, Scalar};
use super::super::ConfigError;
use super::MAX_QUOTA_PODS;
use crate::kubernetes::quantity::Quantity;

/// `[kubernetes.quota]`: what one shard's namespace may use in all, so that
/// no shard can starve the cluster.
#[derive(Clone, Debug)]
pub struct QuotaConfig {
    /// `requests-cpu` (`"4"`): CPU requested by all pods together.
    pub requests_cpu: Quantity,
    /// `requests-memory` (`"8Gi"`).
    pub requests_memory: Quantity,
    /// `limits-cpu` (`"8"`): CPU limits of all pods together.
    pub limits_cpu: Quantity,
    /// `limits-memory` (`"16Gi"`).
    pub limits_memory: Quantity,
    /// `pods` (20): pods in the namespace.
    pub pods: u32,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            requests_cpu: known("4"),
            requests_memory: known("8Gi"),
            limits_cpu: known("8"),
            limits_memory: known("16Gi"),
            pods: 20,
        }
    }
}

/// `[kubernetes.limits]`: defaults for containers that say nothing about
/// resources (the quota makes the API server reject those otherwise).
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// `default-request-cpu` (`"100m"`).
    pub default_request_cpu: Quantity,
    /// `default-request-memory` (`"128Mi"`).
    pub default_request_memory: Quantity,
    /// `default-cpu` (`"1"`): the default CPU limit.
    pub default_cpu: Quantity,
    /// `default-memory` (`"1Gi"`): the default memory limit.
    pub default_memory: Quantity,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            default_request_cpu: known("100m"),
            default_request_memory: known("128Mi"),
            default_cpu: known("1"),
            default_memory: known("1Gi"),
        }
    }
}

/// A default that is a valid quantity by construction (unit-tested).
fn known(text: &str) -> Quantity {
    Quantity::parse(text).unwrap_or_else(|e| unreachable!("default quantity {text}: {e}"))
}

pub(super) fn check_quota(
    at: &Locator<'_>,
    raw: Option<&RawQuota>,
) -> Result<QuotaConfig, ConfigError> {
    let defaults = QuotaConfig::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let q = |value: &Option<Spanned<Scalar>>, name: &str, default: Quantity| {
        quantity(at, value, &format!("kubernetes.quota.{name}"), default)
    };
    Ok(QuotaConfig {
        requests_cpu: q(&raw.requests_cpu, "requests-cpu", defaults.requests_cpu)?,
        requests_memory: q(
            &raw.requests_memory,
            "requests-memory",
            defaults.requests_memory,
        )?,
        limits_cpu: q(&raw.limits_cpu, "limits-cpu", defaults.limits_cpu)?,
        limits_memory: q(&raw.limits_memory, "limits-memory", defaults.limits_memory)?,
        pods: match &raw.pods {
            Some(pods) => check_pods(at, pods)?,
            None => defaults.pods,
        },
    })
}

fn check_pods(at: &Locator<'_>, pods: &Spanned<i64>) -> Result<u32, ConfigError> {
    let value = *pods.get_ref();
    match u32::try_from(value) {
        Ok(n) if (1..=MAX_QUOTA_PODS).contains(&n) => Ok(n),
        _ => Err(at.error(
            pods.span(),
            "kubernetes.quota.pods",
            format!("{value} is out of range: a shard's namespace holds 1 to {MAX_QUOTA_PODS} pods (one per service)"),
        )),
    }
}

/// A positive quantity, or the default when the key is absent.
fn quantity(
    at: &Locator<'_>,
    value: &Option<Spanned<Scalar>>,
    key: &str,
    default: Quantity,
) -> Result<Quantity, ConfigError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let Scalar(text) = value.get_ref();
    let q = Quantity::parse(text).map_err(|e| at.error(value.span(), key, e))?;
    if !q.is_positive() {
        return Err(at.error(
            value.span(),
            key,
            format!(
                "{text:?} must be greater than zero; leave the key out for the default ({default})"
            ),
        ));
    }
    Ok(q)
}

pub(super) fn check_limits(
    at: &Locator<'_>,
    raw: Option<&RawLimits>,
    quota: &QuotaConfig,
    raw_quota: Option<&RawQuota>,
) -> Result<LimitsConfig, ConfigError> {
    let defaults = LimitsConfig::default();
    let limits = match raw {
        None => defaults,
        Some(raw) => {
            let q = |value: &Option<Spanned<Scalar>>, name: &str, default: Quantity| {
                quantity(at, value, &format!("kubernetes.limits.{name}"), default)
            };
            LimitsConfig {
                default_request_cpu: q(
                    &raw.default_request_cpu,
                    "default-request-cpu",
                    defaults.default_request_cpu,
                )?,
                default_request_memory: q(
                    &raw.default_request_memory,
                    "default-request-memory",
                    defaults.default_request_memory,
                )?,
                default_cpu: q(&raw.default_cpu, "default-cpu", defaults.default_cpu)?,
                default_memory: q(
                    &raw.default_memory,
                    "default-memory",
                    defaults.default_memory,
                )?,
            }
        }
    };
    for bound in bounds(&limits, quota, raw, raw_quota) {
        bound.check(at)?;
    }
    Ok(limits)
}

/// One value of the namespace's bounds, with where it was written (if it was).
struct Bounded<'a> {
    key: &'static str,
    value: &'a Quantity,
    span: Option<Range<usize>>,
}

/// `small` must not exceed `large`, or `why`.
struct Bound<'a> {
    small: Bounded<'a>,
    large: Bounded<'a>,
    why: &'static str,
}

impl Bound<'_> {
    /// An error at whichever of the two the user wrote (the smaller first).
    fn check(&self, at: &Locator<'_>) -> Result<(), ConfigError> {
        if self.small.value.compare(self.large.value) != Some(Ordering::Greater) {
            return Ok(());
        }
        let Some((span, key)) = [&self.small, &self.large]
            .into_iter()
            .find_map(|b| b.span.clone().map(|s| (s, b.key)))
        else {
            return Ok(());
        };
        Err(at.error(
            span,
            format!("kubernetes.{key}"),
            format!(
                "{} = {} is more than {} = {}: {}; lower the first or raise the second",
                self.small.key, self.small.value, self.large.key, self.large.value, self.why
            ),
        ))
    }
}

/// The pairs that make a LimitRange the API server accepts and a quota a
/// defaulted container fits in.
fn bounds<'a>(
    limits: &'a LimitsConfig,
    quota: &'a QuotaConfig,
    raw: Option<&RawLimits>,
    raw_quota: Option<&RawQuota>,
) -> Vec<Bound<'a>> {
    let span = |v: Option<&Option<Spanned<Scalar>>>| v.and_then(|v| v.as_ref().map(Spanned::span));
    let b = |key, value, span| Bounded { key, value, span };
    let l = |f: fn(&RawLimits) -> &Option<Spanned<Scalar>>| span(raw.map(f));
    let q = |f: fn(&RawQuota) -> &Option<Spanned<Scalar>>| span(raw_quota.map(f));
    let request_over_limit =
        "a container's default request cannot exceed its default limit (the API server rejects the LimitRange)";
    let over_quota = "a container with the defaults would not fit in the namespace's quota";
    vec![
        Bound {
            small: b(
                "limits.default-request-cpu",
                &limits.default_request_cpu,
                l(|r| &r.default_request_cpu),
            ),
            large: b(
                "limits.default-cpu",
                &limits.default_cpu,
                l(|r| &r.default_cpu),
            ),
            why: request_over_limit,
        },
        Bound {
            small: b(
                "limits.default-request-memory",
                &limits.default_request_memory,
                l(|r| &r.default_request_memory),
            ),
            large: b(
                "limits.default-memory",
                &limits.default_memory,
                l(|r| &r.default_memory),
            ),
            why: request_over_limit,
        },
        Bound {
            small: b(
                "limits.default-request-cpu",
                &limits.default_request_cpu,
                l(|r| &r.default_request_cpu),
            ),
            large: b(
                "quota.requests-cpu",
                &quota.requests_cpu,
                q(|r| &r.requests_cpu),
            ),
            why: over_quota,
        },
        Bound {
            small: b(
                "limits.default-request-memory",
                &limits.default_request_memory,
                l(|r| &r.default_request_memory),
            ),
            large: b(
                "quota.requests-memory",
                &quota.requests_memory,
                q(|r| &r.requests_memory),
            ),
            why: over_quota,
        },
        Bound {
            small: b(
                "limits.default-cpu",
                &limits.default_cpu,
                l(|r| &r.default_cpu),
            ),
            large: b("quota.limits-cpu", &quota.limits_cpu, q(|r| &r.limits_cpu)),
            why: over_quota,
        },
        Bound {
            small: b(
                "limits.default-memory",
                &limits.default_memory,
                l(|r| &r.default_memory),
            ),
            large: b(
                "quota.limits-memory",
                &quota.limits_memory,
                q(|r| &r.limits_memory),
            ),
            why: over_quota,
        },
    ]
}
