//! Kubernetes resource quantities (`500m`, `1Gi`, `2`, `1e3`), checked
//! against apimachinery's grammar, so that a typo in `ephem.toml` fails at
//! load time with its line, not at apply time with the API server's words.
//!
//! ```text
//! quantity        ::= sign? number suffix
//! number          ::= digits | digits "." digits? | "." digits
//! suffix          ::= binarySI | decimalSI | decimalExponent
//! binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei             (powers of 1024)
//! decimalSI       ::= n | u | m | "" | k | M | G | T | P | E  (powers of 1000)
//! decimalExponent ::= ("e" | "E") sign? digits                (powers of 10)
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// What every quantity error ends with: how to write one.
const HOW: &str = "write a number with an optional suffix, e.g. \"500m\", \"2\" or \"1Gi\" \
                   (Ki Mi Gi Ti Pi Ei: powers of 1024; n u m k M G T P E: powers of 1000; e3: powers of 10)";

/// A checked quantity: kept as written (the API server canonicalizes it),
/// with its value in billionths when that fits, for comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantity {
    text: String,
    sign: Ordering,
    nanos: Option<i128>,
}

/// The parts of a quantity's text.
struct Parts<'a> {
    negative: bool,
    integer: &'a str,
    fraction: &'a str,
    suffix: &'a str,
}

impl Quantity {
    /// Parses `text`; the error is one line saying what is wrong and how to write one.
    pub fn parse(text: &str) -> Result<Quantity, String> {
        if text.is_empty() {
            return Err(format!("the quantity is empty; {HOW}"));
        }
        let parts = split(text).ok_or_else(|| format!("{text:?} is not a quantity; {HOW}"))?;
        let (pow10, pow2) =
            suffix_powers(parts.suffix).map_err(|why| format!("{text:?}: {why}"))?;
        let zero = parts
            .integer
            .bytes()
            .chain(parts.fraction.bytes())
            .all(|b| b == b'0');
        let sign = match (zero, parts.negative) {
            (true, _) => Ordering::Equal,
            (false, true) => Ordering::Less,
            (false, false) => Ordering::Greater,
        };
        Ok(Quantity {
            text: text.to_owned(),
            sign,
            nanos: nanos(&parts, pow10, pow2),
        })
    }

    /// The quantity as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the quantity is greater than zero.
    pub fn is_positive(&self) -> bool {
        self.sign == Ordering::Greater
    }

    /// Compares the values; `None` when one is too large to compare exactly.
    pub fn compare(&self, other: &Quantity) -> Option<Ordering> {
        Some(self.nanos?.cmp(&other.nanos?))
    }

    /// The same quantity as k8s-openapi's type, for objects.
    pub fn to_k8s(&self) -> k8s_openapi::apimachinery::pkg::api::resource::Quantity {
        k8s_openapi::apimachinery::pkg::api::resource::Quantity(self.text.clone())
    }
}

impl FromStr for Quantity {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Quantity::parse(text)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Sign, digits before and after the point, and the suffix; `None` when
/// there is no digit.
fn split(text: &str) -> Option<Parts<'_>> {
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let int_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let integer = &rest[..int_end];
    let (fraction, suffix) = match rest[int_end..].strip_prefix('.') {
        Some(after) => {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        }
        None => ("", &rest[int_end..]),
    };
    if integer.is_empty() && fraction.is_empty() {
        return None;
    }
    Some(Parts {
        negative,
        integer,
        fraction,
        suffix,
    })
}

/// The power of ten and the power of two a suffix multiplies by.
fn suffix_powers(suffix: &str) -> Result<(i32, u32), String> {
    let decimal = |p: i32| Ok((p, 0));
    let binary = |p: u32| Ok((0, p));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            if let Some(exponent) = suffix.strip_prefix(['e', 'E']) {
                return parse_exponent(exponent).map(|p| (p, 0));
            }
            Err(unknown_suffix(suffix))
        }
    }
}

/// The signed whole number after `e`.
fn parse_exponent(text: &str) -> Result<i32, String> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "the exponent after `e` must be a whole number, e.g. \"1e3\"; {HOW}"
        ));
    }
    text.parse::<i32>()
        .map_err(|_| format!("the exponent {text} is out of range; {HOW}"))
}

fn unknown_suffix(suffix: &str) -> String {
    const KNOWN: [&str; 15] = [
        "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    // `1MB`, `1MiB`, `1gi`, `1KI`: say which spelling exists, exact case first.
    let without_b = suffix.strip_suffix(['B', 'b']);
    let near = KNOWN
        .iter()
        .find(|k| without_b == Some(**k))
        .or_else(|| KNOWN.iter().find(|k| k.eq_ignore_ascii_case(suffix)))
        .or_else(|| {
            KNOWN
                .iter()
                .find(|k| without_b.is_some_and(|w| k.eq_ignore_ascii_case(w)))
        });
    match near {
        Some(k) => format!(
            "unknown suffix `{suffix}` (suffixes are case-sensitive and have no B: did you mean `{k}`?); {HOW}"
        ),
        None => format!("unknown suffix `{suffix}`; {HOW}"),
    }
}

/// The value in billionths, when it fits in an i128 (rounded towards zero
/// below one billionth, which only matters for absurd inputs).
fn nanos(parts: &Parts<'_>, pow10: i32, pow2: u32) -> Option<i128> {
    let digits = format!("{}{}", parts.integer, parts.fraction);
    let digits = digits.trim_start_matches('0');
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let scale = i64::from(pow10) + 9 - i64::try_from(parts.fraction.len()).ok()?;
    let mut value = mantissa.checked_mul(1i128.checked_shl(pow2)?)?;
    value = if scale >= 0 {
        value.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?
    } else {
        let divisor = u32::try_from(-scale)
            .ok()
            .and_then(|s| 10i128.checked_pow(s));
        divisor.map_or(0, |d| value / d)
    };
    Some(if parts.negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apimachinery_spellings_parse() {
        for good in [
            "0", "1", "+1", "-1", "100m", "0.5", "1.5Gi", ".5", "5.", "128Mi", "1Ki", "2Ti", "1Pi",
            "1Ei", "3n", "7u", "1k", "1M", "1G", "1T", "1P", "1E", "1e3", "1E3", "2e-3", "2e+3",
            "000100m",
        ] {
            let q = Quantity::parse(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
            assert_eq!(q.as_str(), good);
            assert_eq!(q.to_string(), good);
        }
    }

    #[test]
    fn malformed_quantities_are_one_line_errors_saying_how_to_write_one() {
        for (bad, says) in [
            ("", "empty"),
            ("m", "not a quantity"),
            ("-", "not a quantity"),
            (".", "not a quantity"),
            ("one", "not a quantity"),
            ("1GB", "did you mean `G`"),
            ("1MB", "did you mean `M`"),
            ("1MiB", "did you mean `Mi`"),
            ("1kb", "did you mean `k`"),
            ("1gi", "did you mean `Gi`"),
            ("1KI", "did you mean `Ki`"),
            ("1 Gi", "unknown suffix ` Gi`"),
            ("1.5.5", "unknown suffix `.5`"),
            ("1e", "exponent"),
            ("1e3.5", "exponent"),
            ("1e99999999999", "out of range"),
            ("1Gi ", "unknown suffix"),
            ("--1", "not a quantity"),
            ("0x10", "unknown suffix `x10`"),
        ] {
            let err = Quantity::parse(bad).expect_err(bad);
            assert!(err.contains(says), "{bad:?}: {err}");
            assert!(err.contains("e.g. \"500m\""), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn values_compare_across_suffixes() {
        let q = |s: &str| Quantity::parse(s).unwrap();
        assert_eq!(q("1").compare(&q("1000m")), Some(Ordering::Equal));
        assert_eq!(q("100m").compare(&q("0.1")), Some(Ordering::Equal));
        assert_eq!(q("1Gi").compare(&q("1G")), Some(Ordering::Greater));
        assert_eq!(q("1Ki").compare(&q("1024")), Some(Ordering::Equal));
        assert_eq!(q("1e3").compare(&q("1k")), Some(Ordering::Equal));
        assert_eq!(q("128Mi").compare(&q("1Gi")), Some(Ordering::Less));
        assert_eq!(q("-1").compare(&q("0")), Some(Ordering::Less));
        assert_eq!(q("1e30").compare(&q("1")), None);
    }

    #[test]
    fn sign_is_known_even_when_the_value_is_not() {
        let q = |s: &str| Quantity::parse(s).unwrap();
        assert!(q("1n").is_positive());
        assert!(q("1e-20").is_positive());
        assert!(q("1e30").is_positive());
        assert!(!q("0").is_positive());
        assert!(!q("0.000").is_positive());
        assert!(!q("-1").is_positive());
    }
}
