//! Moving bodies during an exchange: the preview taken from the message body, the rest sent
//! to the service in chunks, the service's answer body handed to the client piece by piece.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::body::prefixed;
use super::exchange::within;
use super::pool::{Reader, Writer};
use super::wire::{self, ChunkReader};
use super::IcapError;
use crate::body::{BoxError, ProxyBody};

/// Hands the answer body to the caller piece by piece, no faster than it is taken.
pub(super) async fn stream_body(
    reader: &mut Reader,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
    timeout: Duration,
) -> Result<(), IcapError> {
    let mut chunks = ChunkReader::new();
    loop {
        match within(timeout, chunks.next(reader)).await {
            Ok(Some(piece)) => {
                if tx.send(Ok(piece)).await.is_err() {
                    // The client went away.
                    return Err(IcapError::Closed);
                }
            }
            Ok(None) => return Ok(()),
            Err(e) => {
                let _ = tx.send(Err(BoxError::from(e.to_string()))).await;
                return Err(e);
            }
        }
    }
}

/// The body after the preview, chunk by chunk as it arrives, then the last chunk.
pub(super) async fn send_body(
    writer: &mut Writer,
    mut body: ProxyBody,
    timeout: Duration,
) -> Result<(), IcapError> {
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| IcapError::Body(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            within(timeout, wire::write_chunk(writer, data)).await?;
        }
    }
    within(timeout, async {
        writer.write_all(b"0\r\n\r\n").await?;
        Ok(())
    })
    .await
}

/// Reads up to `n` bytes of `body` for the preview: the bytes, whether the body ended
/// within them, and the rest (any bytes read past `n` first).
pub(super) async fn read_preview(
    mut body: ProxyBody,
    n: usize,
) -> Result<(Bytes, bool, Option<ProxyBody>), BoxError> {
    let mut buf = BytesMut::new();
    while buf.len() < n {
        match body.frame().await {
            None => return Ok((buf.freeze(), true, None)),
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    if body.is_end_stream() && buf.len() == n {
        return Ok((buf.freeze(), true, None));
    }
    let mut all = buf.freeze();
    let over = all.split_off(n);
    Ok((all, false, Some(prefixed(over, body))))
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::super::body::Received;
    use super::*;

    /// A body arriving as `frames`, of unknown length.
    fn frames(frames: &[&'static str]) -> ProxyBody {
        let (tx, body) = Received::channel();
        for f in frames {
            tx.try_send(Ok(Bytes::from_static(f.as_bytes()))).unwrap();
        }
        body
    }

    async fn rest_text(rest: Option<ProxyBody>) -> String {
        match rest {
            Some(b) => String::from_utf8(b.collect().await.unwrap().to_bytes().to_vec()).unwrap(),
            None => String::new(),
        }
    }

    #[tokio::test]
    async fn previews_split_frames_and_know_when_the_body_ended() {
        // (frames, preview size) → (preview, ended, rest)
        let cases: [(&[&'static str], usize, &str, bool, &str); 6] = [
            (&["hello world"], 4, "hell", false, "o world"),
            (&["he", "llo"], 4, "hell", false, "o"),
            (&["abc"], 10, "abc", true, ""),
            (&[], 4, "", true, ""),
            (&["abcd", "ef"], 4, "abcd", false, "ef"),
            (&["abc"], 0, "", false, "abc"),
        ];
        for (input, n, preview, ended, rest) in cases {
            let (got, got_ended, got_rest) = read_preview(frames(input), n).await.unwrap();
            assert_eq!(
                (&got[..], got_ended, rest_text(got_rest).await.as_str()),
                (preview.as_bytes(), ended, rest),
                "{input:?} with preview {n}"
            );
        }
    }
}
