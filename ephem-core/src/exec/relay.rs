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

/// Bytes kept back when a long line is cut, so a secret across the cut is
/// still masked whole (generated secrets are 24 characters).
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
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(at) = memchr::memchr(b'\n', &pending[start..]) {
            push_line(&mut out, &prefix, &masker, &pending[start..start + at]);
            start += at + 1;
        }
        if pending.len() - start > MAX_LINE {
            let cut = pending.len() - CUT_OVERLAP;
            push_line(&mut out, &prefix, &masker, &pending[start..cut]);
            start = cut;
        }
        pending.drain(..start);
        write(sink, &out);
    }
    if !pending.is_empty() {
        let mut out = Vec::new();
        push_line(&mut out, &prefix, &masker, &pending);
        write(sink, &out);
    }
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
