//! The fallback restore for a daemon that cannot reach our loopback server:
//! the image as a `docker save` archive, streamed into `docker load`.
//!
//! Layers go in as stored (compressed): `docker load` decompresses them by
//! their magic bytes and checks them against the config's diff ids.

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::layout::{hex_of, Layout};

/// A stream of the archive's bytes; an error ends it.
pub type ArchiveStream = tokio_stream_shim::Receiver;

/// Streams the docker-archive of the manifest's `config` and `layers`,
/// tagged `repo_tag`, from `layout`.
pub fn docker_archive(
    layout: Layout,
    config: String,
    layers: Vec<String>,
    repo_tag: String,
) -> ArchiveStream {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        if let Err(e) = write(&layout, &config, &layers, &repo_tag, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    tokio_stream_shim::Receiver(rx)
}

type Tx = mpsc::Sender<Result<Bytes, std::io::Error>>;

async fn write(
    layout: &Layout,
    config: &str,
    layers: &[String],
    repo_tag: &str,
    tx: &Tx,
) -> std::io::Result<()> {
    let bad = |d: &str| std::io::Error::other(format!("malformed digest {d}"));
    let config_hex = hex_of(config).ok_or_else(|| bad(config))?;
    let config_name = format!("{config_hex}.json");
    let mut layer_names = Vec::new();
    send_file(layout, config, &config_name, tx).await?;
    for layer in layers {
        let name = format!("{}/layer.tar", hex_of(layer).ok_or_else(|| bad(layer))?);
        send_file(layout, layer, &name, tx).await?;
        layer_names.push(name);
    }
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [repo_tag],
        "Layers": layer_names,
    }])
    .to_string();
    send_entry(tx, "manifest.json", manifest.len() as u64).await?;
    send(tx, Bytes::from(manifest.clone())).await?;
    pad(tx, manifest.len() as u64).await?;
    // Two zero blocks end a tar.
    send(tx, Bytes::from(vec![0u8; 1024])).await
}

async fn send_file(layout: &Layout, digest: &str, name: &str, tx: &Tx) -> std::io::Result<()> {
    let path = layout
        .blob_path(digest)
        .ok_or_else(|| std::io::Error::other(format!("malformed digest {digest}")))?;
    let mut file = tokio::fs::File::open(&path).await?;
    let len = file.metadata().await?.len();
    send_entry(tx, name, len).await?;
    let mut sent = 0u64;
    loop {
        let mut buf = vec![0u8; 256 * 1024];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        sent += n as u64;
        send(tx, Bytes::from(buf)).await?;
    }
    if sent != len {
        return Err(std::io::Error::other(format!(
            "{} changed while being sent",
            path.display()
        )));
    }
    pad(tx, len).await
}

async fn send_entry(tx: &Tx, name: &str, len: u64) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(len);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    send(tx, Bytes::copy_from_slice(header.as_bytes())).await
}

async fn pad(tx: &Tx, len: u64) -> std::io::Result<()> {
    let rest = (512 - len % 512) % 512;
    if rest > 0 {
        send(tx, Bytes::from(vec![0u8; rest as usize])).await?;
    }
    Ok(())
}

async fn send(tx: &Tx, bytes: Bytes) -> std::io::Result<()> {
    tx.send(Ok(bytes))
        .await
        .map_err(|_| std::io::Error::other("the daemon stopped reading the archive"))
}

/// A channel receiver as a `Stream` (tokio-stream's wrapper, without the crate).
pub mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;

    /// The receiving end of the archive's bytes.
    pub struct Receiver(pub(super) tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

    impl futures_util::Stream for Receiver {
        type Item = Result<Bytes, std::io::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}
