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
}
