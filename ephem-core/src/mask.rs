//! Hides secrets in everything shown or written: the terminal, JUnit, the
//! run record, the HTML page, error messages.
//!
//! The sinks call [`mask`] (or [`error_text`] for error and warning lines)
//! on the text they are about to print or write, so every secret the
//! process knows ([`ephem_fixtures::secret`]: `${random}` values, the
//! runner's `${secret.NAME}` values, values read back from kept
//! environments) is masked, whichever path produced the text. A secret is
//! also found in the forms our writers encode it in (JSON, XML and HTML
//! escapes) and percent-encoded in URLs; split across lines, or encoded
//! otherwise, it is not.

use std::sync::{Arc, LazyLock, Mutex};

use aho_corasick::{AhoCorasick, MatchKind};

/// What a secret becomes.
pub const MASK: &str = "***";

/// Replaces each of a set of secrets, in every encoding listed above, with
/// `***`, in one pass over the text.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    finder: Option<AhoCorasick>,
}

impl Masker {
    /// A masker for these secrets; empty ones are ignored.
    pub fn new(secrets: Vec<String>) -> Self {
        let mut patterns: Vec<String> = secrets
            .iter()
            .filter(|s| !s.is_empty())
            .flat_map(|s| encodings(s))
            .collect();
        patterns.sort();
        patterns.dedup();
        // Leftmost-longest: a secret that contains another is masked whole.
        let finder = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("plain string patterns always build")
        });
        Masker { finder }
    }

    /// The text with every secret replaced.
    pub fn mask(&self, text: &str) -> String {
        match &self.finder {
            Some(finder) if finder.is_match(text) => {
                let mut out = String::with_capacity(text.len());
                finder.replace_all_with(text, &mut out, |_, _, dst| {
                    dst.push_str(MASK);
                    true
                });
                out
            }
            _ => text.to_owned(),
        }
    }

    /// Replaces every secret in `text`.
    pub fn mask_in_place(&self, text: &mut String) {
        if let Some(finder) = &self.finder {
            if finder.is_match(text.as_str()) {
                *text = self.mask(text);
            }
        }
    }

    /// The bytes with every secret replaced: for output that may not be
    /// UTF-8 (a command's, relayed by `exec`).
    pub fn mask_bytes<'a>(&self, bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        match &self.finder {
            Some(finder) if finder.is_match(bytes) => {
                let mut out = Vec::with_capacity(bytes.len());
                finder.replace_all_with_bytes(bytes, &mut out, |_, _, dst| {
                    dst.extend_from_slice(MASK.as_bytes());
                    true
                });
                std::borrow::Cow::Owned(out)
            }
            _ => std::borrow::Cow::Borrowed(bytes),
        }
    }

    /// The largest index up to `at` where `bytes` can be cut without
    /// splitting a secret (a piece masked alone would show part of it).
    pub fn safe_cut(&self, bytes: &[u8], at: usize) -> usize {
        let cut = at.min(bytes.len());
        let Some(finder) = &self.finder else {
            return cut;
        };
        let reach = finder.max_pattern_len().saturating_sub(1);
        let from = cut.saturating_sub(reach);
        let to = (cut + reach).min(bytes.len());
        finder
            .find_iter(&bytes[from..to])
            .map(|m| (from + m.start(), from + m.end()))
            .find(|&(start, end)| start < cut && end > cut)
            .map_or(cut, |(start, _)| start)
    }
}

/// The secret as written by each of our sinks: raw (terminal), JSON string
/// escapes (run record), XML and HTML escapes (JUnit, the page; quotes
/// escaped or not, apostrophes as `&apos;` or `&#39;`), percent-encoded
/// (URLs in messages).
fn encodings(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json[1..json.len() - 1].to_owned();
    let markup = secret
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let quoted = markup.replace('"', "&quot;");
    vec![
        secret.to_owned(),
        json,
        markup.clone(),
        quoted.replace('\'', "&apos;"),
        quoted.replace('\'', "&#39;"),
        percent_encoded(secret),
    ]
}

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn percent_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The masker of every secret registered so far, rebuilt only when the
/// register changed.
fn current() -> Arc<Masker> {
    static CURRENT: LazyLock<Mutex<(u64, Arc<Masker>)>> =
        LazyLock::new(|| Mutex::new((u64::MAX, Arc::new(Masker::default()))));
    let generation = ephem_fixtures::secret::generation();
    let mut cached = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    if cached.0 != generation {
        *cached = (
            generation,
            Arc::new(Masker::new(ephem_fixtures::secret::known())),
        );
    }
    cached.1.clone()
}

/// `text` with every secret this process knows replaced by `***`.
pub fn mask(text: &str) -> String {
    current().mask(text)
}

/// Replaces every secret this process knows in `text`.
pub fn mask_in_place(text: &mut String) {
    current().mask_in_place(text)
}

/// An error, warning or note for a person or a CI log: secrets masked, and
/// the query string of every URL cut (a signed or redirected URL carries
/// its credentials there).
pub fn error_text(text: &str) -> String {
    static QUERY: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r#"(?i)\b((?:https?|wss?)://[^\s?#"'<>]+)\?[^\s#"'<>]*"#)
            .expect("a valid pattern")
    });
    let masked = mask(text);
    match QUERY.is_match(&masked) {
        true => QUERY.replace_all(&masked, "$1?***").into_owned(),
        false => masked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_occurrence() {
        let m = Masker::new(vec!["s3cr3t".into(), String::new()]);
        assert_eq!(m.mask("a s3cr3t b s3cr3t"), "a *** b ***");
        assert_eq!(m.mask("nothing here"), "nothing here");
        assert_eq!(Masker::new(Vec::new()).mask("s3cr3t"), "s3cr3t");
    }

    #[test]
    fn a_secret_containing_another_is_masked_whole() {
        let m = Masker::new(vec!["abc".into(), "abcdef".into()]);
        assert_eq!(m.mask("x abcdef y abc"), "x *** y ***");
    }

    #[test]
    fn masks_the_forms_our_writers_encode_a_secret_in() {
        let secret = r#"p&s<"w'd>/ x"#;
        let m = Masker::new(vec![secret.to_owned()]);
        let json = serde_json::to_string(&format!("pw {secret}")).unwrap();
        assert_eq!(m.mask(&json), "\"pw ***\"");
        let html = crate::report::html::escape(secret);
        assert_eq!(m.mask(&format!("<p>{html}</p>")), "<p>***</p>");
        let xml = "p&amp;s&lt;&quot;w&apos;d&gt;/ x";
        assert_eq!(m.mask(xml), "***");
        let partial = "p&amp;s&lt;\"w'd&gt;/ x";
        assert_eq!(m.mask(partial), "***");
        let url = "https://h/?pw=p%26s%3C%22w%27d%3E%2F%20x";
        assert_eq!(m.mask(url), "https://h/?pw=***");
    }

    #[test]
    fn the_process_register_is_what_the_sinks_mask() {
        ephem_fixtures::secret::register("registered-in-a-backend");
        assert_eq!(mask("got registered-in-a-backend"), "got ***");
        let mut text = String::from("registered-in-a-backend!");
        mask_in_place(&mut text);
        assert_eq!(text, "***!");
    }

    #[test]
    fn error_text_cuts_query_strings_of_urls() {
        assert_eq!(
            error_text("GET https://blob.example/x.tar?X-Amz-Signature=abc&t=1 failed: 403"),
            "GET https://blob.example/x.tar?*** failed: 403"
        );
        assert_eq!(
            error_text("redirected to \"http://h:5000/v2/b?sig=1\"; retry"),
            "redirected to \"http://h:5000/v2/b?***\"; retry"
        );
        assert_eq!(error_text("no url? fine"), "no url? fine");
        assert_eq!(error_text("http://h/p#frag"), "http://h/p#frag");
    }

    #[test]
    fn masks_bytes_that_are_not_utf8() {
        let m = Masker::new(vec!["s3cr3t".into(), "s3cr3t-long".into()]);
        assert_eq!(
            &*m.mask_bytes(b"\xff s3cr3t-long s3cr3t\xfe"),
            b"\xff *** ***\xfe"
        );
        assert!(matches!(
            m.mask_bytes(b"clean"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_safe_cut_never_splits_a_secret() {
        let m = Masker::new(vec!["s3cr3t".into()]);
        let text = b"abc s3cr3t def";
        for at in 0..=text.len() {
            let cut = m.safe_cut(text, at);
            assert!(cut <= at);
            assert!(
                !(5..=9).contains(&cut),
                "cut {cut} splits the secret (at {at})"
            );
        }
        assert_eq!(m.safe_cut(text, 7), 4);
        assert_eq!(m.safe_cut(text, 12), 12);
    }
}
