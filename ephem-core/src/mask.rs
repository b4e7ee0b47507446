//! Hides generated secrets (`${random}` values) in anything shown or written.

/// Replaces each known secret with `***`.
#[derive(Clone, Debug, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    /// A masker for these secrets; empty ones are ignored.
    pub fn new(mut secrets: Vec<String>) -> Self {
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Masker { secrets }
    }

    /// The text with every secret replaced.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_owned();
        self.mask_in_place(&mut out);
        out
    }

    /// Replaces every secret in `text`.
    pub fn mask_in_place(&self, text: &mut String) {
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                *text = text.replace(secret.as_str(), "***");
            }
        }
    }

    /// The bytes with every secret replaced: for output that may not be
    /// UTF-8 (a command's, relayed by `exec`).
    pub fn mask_bytes<'a>(&self, bytes: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        let mut out = std::borrow::Cow::Borrowed(bytes);
        for secret in &self.secrets {
            let finder = memchr::memmem::Finder::new(secret.as_bytes());
            if finder.find(&out).is_none() {
                continue;
            }
            let mut masked = Vec::with_capacity(out.len());
            let mut rest: &[u8] = &out;
            while let Some(at) = finder.find(rest) {
                masked.extend_from_slice(&rest[..at]);
                masked.extend_from_slice(b"***");
                rest = &rest[at + secret.len()..];
            }
            masked.extend_from_slice(rest);
            out = std::borrow::Cow::Owned(masked);
        }
        out
    }

    /// The largest index up to `at` where `bytes` can be cut without
    /// splitting a secret (a piece masked alone would show part of it).
    pub fn safe_cut(&self, bytes: &[u8], at: usize) -> usize {
        let mut cut = at.min(bytes.len());
        for secret in &self.secrets {
            let len = secret.len();
            let from = cut.saturating_sub(len - 1);
            let to = (cut + len - 1).min(bytes.len());
            if let Some(found) = memchr::memmem::find(&bytes[from..to], secret.as_bytes()) {
                cut = cut.min(from + found);
            }
        }
        cut
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
