//! The output of several commands at once, as one log: each line relayed
//! whole, prefixed with its shard, generated secrets masked.

use std::io::Write;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::mask::Masker;

/// Where relayed lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sink {
    /// The command's stdout goes to ours.
    Stdout,
    /// Its stderr to ours.
    Stderr,
}

/// A line longer than this is cut and relayed in pieces, so that output
/// without newlines (a progress bar) neither waits nor grows in memory.
const MAX_LINE: usize = 16 * 1024;

/// Bytes kept back when a long line is cut: a secret that may still be
/// arriving is masked whole later (generated secrets are 24 characters).
const CUT_OVERLAP: usize = 256;

/// Relays `from` to `sink` line by line until end of file.
pub(crate) async fn relay<R: AsyncRead + Unpin>(
    mut from: R,
    sink: Sink,
    prefix: String,
    masker: Masker,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8 * 1024];
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        write(sink, &take_lines(&mut pending, &prefix, &masker, false));
    }
    write(sink, &take_lines(&mut pending, &prefix, &masker, true));
}

/// The whole lines of `pending`, prefixed and masked, ready to write; a
/// partial line stays unless it is too long or `last`.
fn take_lines(pending: &mut Vec<u8>, prefix: &str, masker: &Masker, last: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut start = 0;
    while let Some(at) = memchr::memchr(b'\n', &pending[start..]) {
        push_line(&mut out, prefix, masker, &pending[start..start + at]);
        start += at + 1;
    }
    if last && start < pending.len() {
        push_line(&mut out, prefix, masker, &pending[start..]);
        start = pending.len();
    } else if pending.len() - start > MAX_LINE {
        let room = pending.len() - start - CUT_OVERLAP;
        let cut = start + masker.safe_cut(&pending[start..], room);
        push_line(&mut out, prefix, masker, &pending[start..cut]);
        start = cut;
    }
    pending.drain(..start);
    out
}

fn push_line(out: &mut Vec<u8>, prefix: &str, masker: &Masker, line: &[u8]) {
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(&masker.mask_bytes(line));
    out.push(b'\n');
}

/// Writes whole lines under the stream's lock, so shards' lines never mix.
/// A closed stream (`| head`) is not an error: the command keeps running.
fn write(sink: Sink, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // The write may block on a slow reader: the runtime moves its other
    // tasks (signals among them) to another thread meanwhile.
    tokio::task::block_in_place(|| {
        let _ = match sink {
            Sink::Stdout => std::io::stdout().lock().write_all(bytes),
            Sink::Stderr => std::io::stderr().lock().write_all(bytes),
        };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_lines_go_out_prefixed_and_masked_a_partial_one_waits() {
        let masker = Masker::new(vec!["s3cr3t".into()]);
        let mut pending = b"a s3cr3t\nb\npart".to_vec();
        let out = take_lines(&mut pending, "[shard 2] ", &masker, false);
        assert_eq!(out, b"[shard 2] a ***\n[shard 2] b\n");
        assert_eq!(pending, b"part");
        let out = take_lines(&mut pending, "[shard 2] ", &masker, true);
        assert_eq!(out, b"[shard 2] part\n");
        assert!(pending.is_empty());
    }

    #[test]
    fn a_long_line_is_cut_and_a_secret_across_the_cut_still_masked() {
        let masker = Masker::new(vec!["s3cr3t".into()]);
        // The cut would fall three bytes into the secret.
        let mut pending = vec![b'x'; MAX_LINE + 1 - CUT_OVERLAP - 3];
        pending.extend_from_slice(b"s3cr3t");
        pending.resize(MAX_LINE + 1, b'y');
        let first = take_lines(&mut pending, "", &masker, false);
        assert_eq!(
            first.len(),
            MAX_LINE + 1 - CUT_OVERLAP - 3 + 1,
            "cut before it"
        );
        pending.extend_from_slice(b"\n");
        let mut all = first;
        all.extend(take_lines(&mut pending, "", &masker, false));
        let text = String::from_utf8(all).unwrap();
        assert!(!text.contains("s3c") && text.contains("***"), "{text}");
    }
}
