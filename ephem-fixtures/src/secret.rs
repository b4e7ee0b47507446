//! Generated secrets for `${random}`.

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Length of every generated token.
pub const TOKEN_LEN: usize = 24;

/// Returns 24 random alphanumeric characters (about 143 bits).
///
/// Alphanumerics only, rather than base64url, so a token is safe unquoted in
/// URLs, shell words and argv (a leading `-` would read as a flag).
pub fn random_token() -> Result<String, String> {
    let mut token = String::with_capacity(TOKEN_LEN);
    let mut buf = [0u8; 64];
    while token.len() < TOKEN_LEN {
        getrandom::fill(&mut buf)
            .map_err(|e| format!("cannot read the system's random source: {e}"))?;
        // Rejection sampling keeps every character equally likely: 248 = 4 * 62.
        for byte in buf.iter().filter(|b| **b < 248) {
            if token.len() == TOKEN_LEN {
                break;
            }
            token.push(ALPHABET[usize::from(*byte) % ALPHABET.len()] as char);
        }
    }
    Ok(token)
}
